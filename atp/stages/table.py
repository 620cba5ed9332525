"""Aggregate every evaluation into the results table (methods x suites, mean +- std over seeds).

    python -m atp.stages.table --config job.yaml --metrics <metrics.json ...> \
        --out-md results/<exp>/table.md --out-csv results/<exp>/table.csv
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from atp import cli
from atp.runtime import git_info, read_json
from atp.tracking import summary_metrics

log = logging.getLogger("atp.table")


# Rows as in the paper's Table 1: language baselines, the two controls, then implicit methods (iCoT, an sft format,
# among them) and ablations.
VARIANT_ORDER = ["pause", "icot", "coconut", "codi", "colar", "simcot", "atp", "atp_no_vae", "atp_no_stop"]


def start_spec(spec: dict, methods: dict) -> dict:
    """The spec of the method an rl method's chain of inits starts from (the spec itself for any other method)."""
    seen = set()
    while spec.get("stage") == "rl" and spec.get("init") in methods and spec["init"] not in seen:
        seen.add(spec["init"])
        spec = methods[spec["init"]]
    return spec


def is_implicit_row(spec: dict, methods: dict) -> bool:
    """A method that reasons without writing its CoT: a latent method, RL from one (RL from CoT-SFT is a language
    row; RL whose start is not listed counts as latent), or iCoT."""
    start = start_spec(spec, methods)
    return start.get("stage") in ("latent_sft", "rl") or start.get("format") == "icot"


def row_order(name: str, spec: dict, methods: dict | None = None) -> tuple:
    """Language baselines (CoT + RL right after CoT-SFT), controls, latent methods by variant; RL from a latent
    method right after the latent methods of its start's variant (ATP-Latent's after ATP-Latent (SFT))."""
    stage = spec.get("stage", "sft")
    if stage == "sft" and spec.get("format") == "icot":
        return (1, VARIANT_ORDER.index("icot"), 0, name)
    if stage == "sft":
        return (0, spec.get("format", "cot") != "cot", spec.get("init") is not None, name)
    if stage == "rl":
        start = start_spec(spec, methods or {})
        if start.get("stage") == "sft":
            return (0, False, True, name)
        variant = start.get("variant") if start.get("variant") in VARIANT_ORDER else "atp"
        return (1, VARIANT_ORDER.index(variant), 1, name)
    variant = spec.get("variant", "")
    return (1, VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), 0, name)


def sampled_average_std(metrics: list[dict], suites: list[str]) -> float:
    """Std over sampled-latent evaluations of the suite-averaged accuracy (one training seed); 0 if deterministic."""
    runs = [m.get("accuracy_runs") for m in metrics if m["suite"] in suites]
    if not runs or any(not r or len(r) != len(runs[0]) for r in runs):
        return 0.0
    averages = [statistics.fmean(100 * r[i] for r in runs) for i in range(len(runs[0]))]
    return statistics.pstdev(averages)


def aggregate(metrics: list[dict], methods: dict) -> object:
    """A DataFrame with one row per method: each suite's accuracy and tokens (mean, std over seeds) and averages."""
    import pandas as pd

    suites = list(dict.fromkeys(m["suite"] for m in metrics))  # in the order the workflow lists them
    rows = []
    for name in sorted(dict.fromkeys(m["method"] for m in metrics), key=lambda n: row_order(n, methods.get(n, {}), methods)):
        spec = methods.get(name, {})
        mine = [m for m in metrics if m["method"] == name]
        if not mine:
            continue
        seeds = sorted({m["seed"] for m in mine})
        row = {"method": name, "label": spec.get("label", name), "seeds": len(seeds)}
        row["config_hash"] = " ".join(sorted({m.get("model_config_hash") or "?" for m in mine}))  # the training job's config
        per_seed_avg_acc, per_seed_avg_tok = [], []
        for seed in seeds:
            by_suite = {m["suite"]: m for m in mine if m["seed"] == seed}
            per_seed_avg_acc.append(statistics.fmean(100 * by_suite[s]["accuracy"] for s in suites if s in by_suite))
            per_seed_avg_tok.append(statistics.fmean(by_suite[s]["tokens"] for s in suites if s in by_suite))
        for suite in suites:
            accuracy = [100 * m["accuracy"] for m in mine if m["suite"] == suite]
            tokens = [m["tokens"] for m in mine if m["suite"] == suite]
            row[f"{suite}_acc"] = statistics.fmean(accuracy)
            # Over training seeds; with one seed, over the sampled-latent evaluations (0 when deterministic).
            sampled = [m.get("accuracy_std", 0.0) * 100 for m in mine if m["suite"] == suite]
            row[f"{suite}_acc_std"] = statistics.stdev(accuracy) if len(accuracy) > 1 else sampled[0]
            row[f"{suite}_tokens"] = statistics.fmean(tokens)
            latents = [m["latents"] for m in mine if m["suite"] == suite and "latents" in m]
            row[f"{suite}_latents"] = statistics.fmean(latents) if latents else None
            for key in ("accuracy_vote", "tokens_vote"):  # majority vote over sampled latent chains (eval.vote)
                values = [(100 if key == "accuracy_vote" else 1) * m[key] for m in mine if m["suite"] == suite and key in m]
                if values:
                    row[f"{suite}_{key}"] = statistics.fmean(values)
            for m in mine:
                if m["suite"] == suite and m.get("fidelity_by_step"):
                    for step, value in m["fidelity_by_step"].items():
                        row.setdefault(f"{suite}_fidelity_step{step}", []).append(100 * value)
        row["avg_acc"] = statistics.fmean(per_seed_avg_acc)
        for seed, value in zip(seeds, per_seed_avg_acc):  # for the margins, paired by seed
            row[f"avg_acc_seed{seed}"] = value
        row["avg_acc_std"] = (
            statistics.stdev(per_seed_avg_acc) if len(per_seed_avg_acc) > 1 else sampled_average_std(mine, suites)
        )
        row["avg_tokens"] = statistics.fmean(per_seed_avg_tok)
        for key in ("accuracy_vote", "tokens_vote", "vote"):
            values = [m[key] for m in mine if key in m]
            if key != "vote" and len(values) == len(mine):  # every suite and seed voted
                row[f"avg_{key}"] = statistics.fmean(row[f"{s}_{key}"] for s in suites)
            elif key == "vote" and values:
                row["vote"] = max(values)
        rows.append({k: statistics.fmean(v) if isinstance(v, list) else v for k, v in row.items()})
    return pd.DataFrame(rows).round(4), suites


def markdown(frame, suites: list[str], provenance: str, methods: dict | None = None) -> str:
    header = ["Method"] + [f"{s} acc (%)" for s in suites] + ["avg acc (%)"] + [f"{s} #tok" for s in suites] + ["avg #tok"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        cells = [row["label"]]
        for s in suites + ["avg"]:
            cells.append(f"{row[f'{s}_acc']:.1f} ± {row[f'{s}_acc_std']:.1f}")
        cells += [f"{row[f'{s}_tokens']:.1f}" for s in suites] + [f"{row['avg_tokens']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(frame["seeds"].max()) if len(frame) else 0
    note = (
        f"\nAccuracy in %, mean ± std over {seeds} training seed(s)"
        + (" (with one seed: ± std over the sampled-latent evaluations, 0 for deterministic models)" if seeds == 1 else "")
        + ". #tok = generated tokens per question: CoT and answer for language models; latents used and answer"
        " tokens for latent models (the paper's count). EOS excluded.\n"
    )
    if "config_hash" in frame.columns:
        trained = ", ".join(f"{row['label']} `{row['config_hash']}`" for _, row in frame.iterrows())
        provenance += f"Training job config hashes (tag `config_hash` of each MLflow training run): {trained}.\n"
    return (
        "# Results\n\n"
        + "\n".join(lines)
        + "\n"
        + note
        + margins_markdown(frame, methods or {})
        + vote_markdown(frame, suites)
        + fidelity_markdown(frame, suites)
        + provenance
    )


def is_control(spec: dict) -> bool:
    """The two controls every latent result is read against: pause tokens, and No-CoT fine-tuning of a model."""
    return spec.get("variant") == "pause" or (
        spec.get("stage") == "sft" and spec.get("format") == "nocot" and spec.get("init") is not None
    )


def paired_difference(a, b) -> tuple[float, float | None, int]:
    """(mean, standard error, seeds) of row a's average accuracy minus row b's, paired by training seed: the seeds
    both have, whose runs share their start (the same seed's CoT-SFT model) and data order, so that what they
    share cancels. The standard error is the per-seed differences' std over sqrt(seeds); None with one seed."""
    import math

    seeds = sorted(
        {c for c in a.index if c.startswith("avg_acc_seed") and a[c] == a[c]}
        & {c for c in b.index if c.startswith("avg_acc_seed") and b[c] == b[c]}
    )
    diffs = [a[c] - b[c] for c in seeds]
    if not diffs:  # rows from a table without per-seed columns: the averages alone
        return a["avg_acc"] - b["avg_acc"], None, 1
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return statistics.fmean(diffs), se, len(diffs)


def margins_markdown(frame, methods: dict) -> str:
    """Each implicit (latent, iCoT) and RL method's four-suite average minus the better control's and minus SIM-CoT's, paired by
    training seed (paired_difference), with the standard error of the paired differences."""

    rows = {row["method"]: row for _, row in frame.iterrows()}
    controls = [rows[m] for m in rows if is_control(methods.get(m, {}))]
    latent = [rows[m] for m in rows if is_implicit_row(methods.get(m, {}), methods) and not is_control(methods.get(m, {}))]
    if not controls or not latent:
        return ""
    better = max(controls, key=lambda r: r["avg_acc"])
    references = [better] + [rows[m] for m in rows if methods.get(m, {}).get("variant") == "simcot"]

    def difference(a, b) -> str:
        mean, se, _ = paired_difference(a, b)
        return f"{mean:+.1f} (one seed: no standard error)" if se is None else f"{mean:+.1f} ± {se:.1f}"

    header = ["Method"] + [f"minus {r['label']}" for r in references]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in latent:
        lines.append(
            "| "
            + " | ".join([row["label"]] + ["-" if ref["method"] == row["method"] else difference(row, ref) for ref in references])
            + " |"
        )
    return (
        f"\n## Margins on the average accuracy (points)\n\nAgainst the better control ({better['label']}) and SIM-CoT, "
        "paired by training seed (the seeds both have); ± is the standard error of the per-seed differences.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def vote_markdown(frame, suites: list[str]) -> str:
    """Majority vote over k sampled latent chains (eval.vote) beside the sampled accuracy: test-time scaling that
    a deterministic latent method cannot do, at k times the tokens."""
    if "avg_accuracy_vote" not in frame.columns:
        return ""
    rows = [row for _, row in frame.iterrows() if row.get("avg_accuracy_vote") == row.get("avg_accuracy_vote")]  # not NaN
    if not rows:
        return ""
    header = ["Method", "k"] + [f"{s} vote (%)" for s in suites] + ["avg vote (%)", "avg sampled (%)", "avg #tok of the vote"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], f"{int(row['vote'])}"] + [f"{row[f'{s}_accuracy_vote']:.1f}" for s in suites]
        cells += [f"{row['avg_accuracy_vote']:.1f}", f"{row['avg_acc']:.1f}", f"{row['avg_tokens_vote']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n## Majority vote over sampled latent chains\n\nEach question's answer is the one most of k chains, sampled from "
        "the latent policy, gave; #tok counts all k chains.\n\n" + "\n".join(lines) + "\n"
    )


def fidelity_markdown(frame, suites: list[str]) -> str:
    """Step-decoding fidelity by latent-step index on the first suite, for models with a step decoder."""
    suite = suites[0] if suites else None
    columns = sorted(
        (c for c in frame.columns if suite and c.startswith(f"{suite}_fidelity_step")), key=lambda c: int(c.rsplit("step", 1)[1])
    )
    rows = [row for _, row in frame.iterrows() if any(row.get(c) == row.get(c) and row.get(c) is not None for c in columns)]
    if not rows:
        return ""
    header = ["Method", f"{suite} latents"] + [f"step {c.rsplit('step', 1)[1]}" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], f"{row[f'{suite}_latents']:.2f}"]
        cells += ["-" if row.get(c) is None or row.get(c) != row.get(c) else f"{row[c]:.1f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"\n## Step-decoding fidelity on `{suite}` (%)\n\nShare of decoded latent steps whose equation is true and whose "
        "result is an intermediate result of the gold CoT, by step index.\n\n" + "\n".join(lines) + "\n"
    )


def main(args, config: dict) -> None:
    from atp.config import config_hash
    from atp.tracking import Tracker

    metrics = [read_json(p) for p in args.metrics]
    frame, suites = aggregate(metrics, config["methods"])
    git = git_info()
    provenance = f"\nProduced from git commit {git['commit']} (dirty: {git['dirty']}), job config hash {config_hash(config)}.\n"
    Path(args.out_md).write_text(markdown(frame, suites, provenance, config["methods"]), encoding="utf-8")
    frame.to_csv(args.out_csv, index=False)
    log.info("wrote %s and %s", args.out_md, args.out_csv)
    with Tracker(config, "table", args.parent, "table", {"rule": args.rule or "table"}, enabled=not args.no_tracking) as tracker:
        tracker.log_metrics(summary_metrics(frame.to_dict("records")))
        tracker.log_artifact(args.out_md)
        tracker.log_artifact(args.out_csv)


if __name__ == "__main__":
    p = cli.parser("Aggregate evaluation metrics into the results table.")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-csv", required=True)
    cli.run(main, p)
