"""Is a change in greedy validation accuracy more than noise? Count the questions two models disagree on.

    python scripts/search/paired_flips.py --data-dir results/default/data \
        --base results/default/train/cot_sft/seed0/model \
        --model results/default/train/cot_rl/seed1/model --model results/default/train/cot_rl/seed2/model \
        --out docs/experiments/cot-rl-flips-2026-12-07.jsonl

Each CoT or No-CoT model decodes the validation split greedily (as the stages' `val/accuracy` does), or several
validation-side files pooled (`--split val --split twins/test --split twins/hard ...`: data prep's validation twins
of the test suites, drawn apart from the suites). Against the base model, per question: wrong -> right (`gained`)
and right -> wrong (`lost`). Only the questions that flip carry information on the difference, so its standard error
is sqrt(gained + lost) / n and McNemar's statistic z = (gained - lost) / sqrt(gained + lost): |z| < 2 means the two
models' accuracies are not told apart by these problems. The line also says what changed in the written chains:
how many differ, and how many lost (gained) answers come with (repair) a false equation.
A 1-point difference on 500 problems with 50 flips is z = 0.7. Prints and appends one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def paired_flips(base: list[bool], other: list[bool]) -> dict:
    """Accuracy difference of `other` over `base` (points), its standard error from the flips, and McNemar's z."""
    if len(base) != len(other) or not base:
        raise ValueError(f"need two equally long, non-empty lists of outcomes; got {len(base)} and {len(other)}")
    n = len(base)
    gained = sum(1 for a, b in zip(base, other) if b and not a)
    lost = sum(1 for a, b in zip(base, other) if a and not b)
    flips = gained + lost
    return {
        "n": n,
        "base_accuracy": 100 * sum(base) / n,
        "accuracy": 100 * sum(other) / n,
        "difference": 100 * (gained - lost) / n,
        "standard_error": 100 * math.sqrt(flips) / n,
        "gained": gained,
        "lost": lost,
        "z": (gained - lost) / math.sqrt(flips) if flips else 0.0,
    }


def why_flipped(base: list[str], other: list[str], base_right: list[bool], other_right: list[bool]) -> dict:
    """What changed in the written chains: how many differ at all, how many lost answers come with a false equation
    in the new chain, how many gained ones repair a false equation of the base's."""
    from atp.text import equation_holds, extract_steps

    def false_step(text: str) -> bool:
        return any(not equation_holds(step) for step in extract_steps(text))

    lost = [i for i, (a, b) in enumerate(zip(base_right, other_right)) if a and not b]
    gained = [i for i, (a, b) in enumerate(zip(base_right, other_right)) if b and not a]
    return {
        "chains_changed": sum(extract_steps(a) != extract_steps(b) for a, b in zip(base, other)),
        "lost_with_a_false_step": sum(false_step(other[i]) for i in lost),
        "gained_from_a_false_step": sum(false_step(base[i]) for i in gained),
        "false_chains_base": sum(map(false_step, base)),
        "false_chains": sum(map(false_step, other)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="prepared data, whose --split files are decoded")
    p.add_argument("--split", action="append", help="a file under --data-dir, without .jsonl (repeatable; default: val)")
    p.add_argument("--base", required=True, help="a CoT or No-CoT model folder, the reference")
    p.add_argument("--model", action="append", required=True, help="a model folder to compare (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON line per model here")
    args = p.parse_args(argv)

    import torch

    from atp.config import OWN_SPLITS
    from atp.data.records import append_jsonl, read_jsonl
    from atp.evaluate import greedy_generate, score
    from atp.modeling import load_model

    torch.set_num_threads(args.threads)
    splits = args.split or ["val"]
    if any(split not in OWN_SPLITS and not split.startswith("twins/") for split in splits):  # the rest are suites
        p.error("the test suites are read once, by the pipeline's evaluation; compare on validation (val, twins/...)")
    records = {split: read_jsonl(Path(args.data_dir) / f"{split}.jsonl") for split in splits}

    def outcomes(path: str) -> dict[str, list[dict]]:
        model, tokenizer = load_model(path)
        result = {}
        for split, rows in records.items():
            texts = greedy_generate(model, tokenizer, [r["question"] for r in rows], args.max_new_tokens, args.batch_size, "cpu")
            result[split] = score(rows, texts)[0]
        return result

    def right(predictions: dict[str, list[dict]], split: str | None = None) -> list[bool]:
        return [p["correct"] for name in ([split] if split else splits) for p in predictions[name]]

    def chains(predictions: dict[str, list[dict]]) -> list[str]:
        return [p["generation"] for name in splits for p in predictions[name]]

    base = outcomes(args.base)
    for path in args.model:
        other = outcomes(path)
        line = {"base": args.base, "model": path, "splits": splits, **paired_flips(right(base), right(other))}
        line.update(why_flipped(chains(base), chains(other), right(base), right(other)))
        if len(splits) > 1:
            line["by_split"] = {split: paired_flips(right(base, split), right(other, split)) for split in splits}
        print(json.dumps(line), flush=True)
        if args.out:
            append_jsonl(args.out, line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
