"""Data prep: every split in the record contract, the tokenizer, and a data card.

    python -m atp.stages.prepare_data --config job.yaml --out-dir results/<exp>/data

Writes <out-dir>/<split>.jsonl for train, val and each suite, <out-dir>/twins/<suite>.jsonl
(the validation twin of each synthetic suite: its settings drawn again from another random
stream, for tuning suite difficulty without looking at the suite), <out-dir>/tokenizer/,
and card.json / card.md. Nothing is written until every split has been read and
checked, so a bad record leaves no partial output.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from atp import cli
from atp.config import OWN_SPLITS, split_key, split_source, split_specs
from atp.data.records import DataError, file_digest, write_jsonl
from atp.runtime import write_json
from atp.text import cot_target, normalise_question, prompt_text
from atp.tracking import Tracker, data_tags

log = logging.getLogger("atp.prepare_data")


def build_splits(config: dict) -> tuple[dict[str, list[dict]], dict[str, int], dict[str, list[dict]]]:
    """All splits as contract records, in a fixed order, and the validation twins of the synthetic suites.

    Returns (records by split, skipped bad records by split, twin records by suite). A twin is the same
    suite settings drawn from another random stream, kept apart from train, val and its suite: suite
    difficulty is tuned on the twins, and the suites themselves are looked at once, at the end.
    """
    from atp.data.sources import load_source
    from atp.data.synthetic import SuiteSpec, generate_split, twin_name

    data = config["data"]
    splits: dict[str, list[dict]] = {}
    skipped: dict[str, int] = {}
    twins: dict[str, list[dict]] = {}
    seen: set[str] = set()  # normalised questions of train (and val): kept out of later splits
    for name, spec in split_specs(config).items():
        source = split_source(spec)
        if isinstance(source, SuiteSpec):
            records = generate_split(name, source, data["seed"], exclude=seen)
            skipped[name] = 0
            if name not in OWN_SPLITS:
                own = seen | {normalise_question(r["question"]) for r in records}
                twins[name] = generate_split(twin_name(name), source, data["seed"], exclude=own)
        else:
            records, skipped[name] = load_source(source, name, skip_bad=data["skip_bad_records"])
            if name != "train":
                leaked = [r for r in records if normalise_question(r["question"]) in seen]
                if leaked:
                    log.warning("%s: dropped %d question(s) that also appear in training data", name, len(leaked))
                    records = [r for r in records if normalise_question(r["question"]) not in seen]
        if name in OWN_SPLITS:  # later splits (the RL prompts, the suites) leave these questions out
            seen.update(normalise_question(r["question"]) for r in records)
        splits[name] = records
    return splits, skipped, twins


def make_tokenizer(config: dict, train: list[dict]):
    from atp.modeling import build_tokenizer, pretrained_tokenizer

    model = config["model"]
    if model["pretrained"]:
        return pretrained_tokenizer(model["pretrained"])
    return build_tokenizer((prompt_text(r["question"]) + cot_target(r["steps"], r["answer"]) for r in train), model["vocab_size"])


def _summary(values: list[int]) -> dict:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0, "p95": 0}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(values), 3),
        "min": ordered[0],
        "max": ordered[-1],
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def data_card(name: str, records: list[dict], tokenizer, skipped: int) -> dict:
    """Counts, steps per problem, equivalent-label counts and token lengths of one split."""
    steps = [len(r["steps"]) for r in records]
    prompt_tokens = [len(tokenizer.encode(prompt_text(r["question"]), add_special_tokens=False)) for r in records]
    target_tokens = [len(tokenizer.encode(cot_target(r["steps"], r["answer"]), add_special_tokens=False)) for r in records]
    card = {
        "split": name,
        "count": len(records),
        "skipped_bad_records": skipped,
        "sources": sorted({r["source"] for r in records}),
        "steps": _summary(steps),
        "steps_histogram": {str(k): steps.count(k) for k in sorted(set(steps))},
        "prompt_tokens": _summary(prompt_tokens),
        "cot_target_tokens": _summary(target_tokens),
    }
    labels = [r["n_labels"] for r in records if "n_labels" in r]
    if labels:
        card["equivalent_labels"] = {**_summary(labels), "share_with_several": round(sum(x > 1 for x in labels) / len(labels), 4)}
    return card


def card_markdown(cards: list[dict]) -> str:
    lines = [
        "| split | count | skipped | steps mean (min-max) | equivalent labels mean (max) | prompt tokens mean (max) "
        "| CoT tokens mean (max) | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        eq = c.get("equivalent_labels")
        eq_text = f"{eq['mean']} ({eq['max']})" if eq else "-"
        lines.append(
            f"| {c['split']} | {c['count']} | {c['skipped_bad_records']} | {c['steps']['mean']} "
            f"({c['steps']['min']}-{c['steps']['max']}) "
            f"| {eq_text} | {c['prompt_tokens']['mean']} ({c['prompt_tokens']['max']}) "
            f"| {c['cot_target_tokens']['mean']} ({c['cot_target_tokens']['max']}) | {c['sha256'][:12]} |"
        )
    return "# Data card\n\n" + "\n".join(lines) + "\n"


def main(args, config: dict) -> None:
    out_dir = Path(args.out_dir)
    splits, skipped, twins = build_splits(config)
    empty = [name for name, records in splits.items() if not records]
    if empty:
        raise DataError(f"config key '{split_key(empty[0])}'", "the split is empty")
    tokenizer = make_tokenizer(config, splits["train"])
    cards = []
    (out_dir / "twins").mkdir(parents=True, exist_ok=True)  # a declared output, empty when no suite is synthetic
    outputs = [(name, records, skipped[name]) for name, records in splits.items()] + [
        (f"twins/{name}", records, 0) for name, records in twins.items()
    ]
    for name, records, bad in outputs:  # written only after every split was read and checked
        path = out_dir / f"{name}.jsonl"
        write_jsonl(path, records)
        cards.append({**data_card(name, records, tokenizer, bad), "sha256": file_digest(path), "path": str(path)})
    if "rl" not in splits:  # an RL split of an earlier config must not outlive it (the RL stage reads it if present)
        (out_dir / "rl.jsonl").unlink(missing_ok=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    write_json(out_dir / "card.json", {"splits": cards, "vocab_size": len(tokenizer)})
    (out_dir / "card.md").write_text(card_markdown(cards), encoding="utf-8")
    log.info("wrote %s", ", ".join(f"{c['split']}={c['count']}" for c in cards))
    with Tracker(
        config,
        "data",
        args.parent,
        "data",
        {"rule": args.rule or "data", "wildcards": args.wildcards},
        enabled=not args.no_tracking,
    ) as tracker:
        for card in cards:
            tracker.log_input(card["split"], card["sha256"], card["path"], card["count"])
        tracker.set_parent_tags(data_tags(out_dir / "card.json"))
        tracker.log_metrics({f"data/{c['split']}/{k}": c[k] for c in cards for k in ("count", "skipped_bad_records")})
        tracker.log_metrics({"data/vocab_size": len(tokenizer)})
        tracker.log_artifact(out_dir / "card.json")
        tracker.log_artifact(out_dir / "card.md")


if __name__ == "__main__":
    p = cli.parser("Prepare the data splits, the tokenizer and the data card.")
    p.add_argument("--out-dir", required=True)
    cli.run(main, p)
