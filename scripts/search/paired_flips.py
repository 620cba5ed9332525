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
models' accuracies are not told apart by these problems.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="prepared data: its val.jsonl is decoded")
    p.add_argument("--split", action="append", help="a file under --data-dir, without .jsonl (repeatable; default: val)")
    p.add_argument("--base", required=True, help="a CoT or No-CoT model folder, the reference")
    p.add_argument("--model", action="append", required=True, help="a model folder to compare (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON line per model here")
    args = p.parse_args(argv)

    import torch

    from atp.data.records import append_jsonl, read_jsonl
    from atp.evaluate import greedy_generate, score
    from atp.modeling import load_model

    torch.set_num_threads(args.threads)
    splits = args.split or ["val"]
    if any(split.split("/")[-1] in ("test", "hard", "easy", "varied") and "twins/" not in split for split in splits):
        p.error("the test suites are read once, by the pipeline's evaluation; compare on validation (val, twins/...)")
    records = {split: read_jsonl(Path(args.data_dir) / f"{split}.jsonl") for split in splits}

    def outcomes(path: str) -> dict[str, list[bool]]:
        model, tokenizer = load_model(path)
        result = {}
        for split, rows in records.items():
            texts = greedy_generate(model, tokenizer, [r["question"] for r in rows], args.max_new_tokens, args.batch_size, "cpu")
            result[split] = [p["correct"] for p in score(rows, texts)[0]]
        return result

    base = outcomes(args.base)
    pooled = [x for split in splits for x in base[split]]
    for path in args.model:
        other = outcomes(path)
        line = {"base": args.base, "model": path, "splits": splits}
        line.update(paired_flips(pooled, [x for split in splits for x in other[split]]))
        if len(splits) > 1:
            line["by_split"] = {split: paired_flips(base[split], other[split]) for split in splits}
        print(json.dumps(line), flush=True)
        if args.out:
            append_jsonl(args.out, line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
