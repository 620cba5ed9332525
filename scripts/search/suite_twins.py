"""Tune a synthetic suite's difficulty on its validation twin: score a model on candidate suite settings.

    python scripts/search/suite_twins.py --data-dir results/default/data \
        --model results/default/train/cot_sft/seed0/model \
        --candidate 'hard:q20={"min_ops": 2, "max_quantity": 20, "max_result": 120}' \
        --out docs/experiments/suites.jsonl

Each candidate `<suite>:<label>=<JSON overrides>` is drawn as that suite's *twin*
(`atp.data.synthetic.twin_name`: the suite's settings, another random stream, the
questions of train and val left out; data prep also leaves out the suite's own), with
`data.synthetic` of config/config.yaml under the overrides. The test suites are
never drawn or read here. A CoT or No-CoT model is decoded greedily; prints and
appends one JSON line per candidate: accuracy, accuracy by number of steps, tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="prepared data (tokenizer, train and val to keep out)")
    p.add_argument("--model", required=True, help="a CoT or No-CoT model folder")
    p.add_argument("--candidate", action="append", required=True, help="<suite>:<label>=<JSON overrides>")
    p.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    p.add_argument("--n", type=int, default=300, help="problems per twin")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    from atp import modeling
    from atp.config import load
    from atp.data.records import append_jsonl, read_jsonl
    from atp.data.synthetic import SuiteSpec, generate_split, twin_name
    from atp.evaluate import greedy_generate, score
    from atp.text import normalise_question

    torch.set_num_threads(args.threads)
    config = load(args.config)  # resolved: config.yaml sets only what differs from the schema's defaults
    data_dir = Path(args.data_dir)
    seen = {normalise_question(r["question"]) for split in ("train", "val") for r in read_jsonl(data_dir / f"{split}.jsonl")}
    model, tokenizer = modeling.load_model(args.model)
    for text in args.candidate:
        head, _, overrides = text.partition("=")
        suite, _, label = head.partition(":")
        spec = SuiteSpec.from_dict({**config["data"]["synthetic"], "n": args.n, **json.loads(overrides)})
        records = generate_split(twin_name(suite), spec, config["data"]["seed"], exclude=seen)
        started = time.time()
        generations = greedy_generate(model, tokenizer, [r["question"] for r in records], 96, 250, torch.device("cpu"))
        _, m = score(records, generations)
        result = {
            "suite": suite,
            "label": label,
            "overrides": json.loads(overrides),
            "model": args.model,
            "n": len(records),
            "accuracy": m["accuracy"],
            "by_steps": m["accuracy_by_steps"],
            "tokens": m["tokens"],
            "seconds": round(time.time() - started, 1),
        }
        print(append_jsonl(args.out, result), flush=True)


if __name__ == "__main__":
    main()
