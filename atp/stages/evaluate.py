"""Evaluate one trained model on every suite: greedy decoding, answer parsing, accuracy, tokens.

    python -m atp.stages.evaluate --config job.yaml --method cot_sft --seed 0 \
        --model results/<exp>/train/cot_sft/seed0/model --data-dir results/<exp>/data \
        --suites test hard easy varied --out-dir results/<exp>/eval/cot_sft/seed0

Writes <out-dir>/<suite>/predictions.jsonl and <out-dir>/<suite>/metrics.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from atp import cli
from atp.config import EvalConfig, to_dataclass
from atp.data.records import read_jsonl, write_jsonl
from atp.runtime import compute_init, seed_everything, write_json

log = logging.getLogger("atp.evaluate")


def main(args, config: dict) -> None:
    from atp.evaluate import greedy_generate, score
    from atp.modeling import load_model
    from atp.tracking import Tracker

    eval_cfg = to_dataclass(EvalConfig, config["eval"], "eval")
    dist = compute_init(args.threads)
    seed_everything(args.seed)
    model, tokenizer = load_model(args.model)
    model.to(dist.device)
    out_dir = Path(args.out_dir)
    tags = {"rule": args.rule or "evaluate", "wildcards": args.wildcards, "seed": args.seed, "method": args.method}
    with Tracker(config, "evaluate", args.parent, f"eval-{args.method}-seed{args.seed}", tags, enabled=not args.no_tracking) as tracker:
        for suite in args.suites:
            records = read_jsonl(Path(args.data_dir) / f"{suite}.jsonl", check_steps=False)
            if eval_cfg.limit is not None:
                records = records[: eval_cfg.limit]
            started = time.time()
            generations = greedy_generate(
                model, tokenizer, [r["question"] for r in records], eval_cfg.max_new_tokens, eval_cfg.batch_size, dist.device, progress=True
            )
            predictions, metrics = score(records, generations)
            seconds = time.time() - started
            write_jsonl(out_dir / suite / "predictions.jsonl", predictions)
            write_json(out_dir / suite / "metrics.json", {"method": args.method, "seed": args.seed, "suite": suite, **metrics})
            log.info("%s on %s: accuracy %.4f, %.1f tokens, %.1fs", args.method, suite, metrics["accuracy"], metrics["tokens"], seconds)
            tracker.log_metrics(
                {
                    f"eval/{suite}/accuracy": metrics["accuracy"],
                    f"eval/{suite}/tokens": metrics["tokens"],
                    f"eval/{suite}/format_rate": metrics["format_rate"],
                    f"eval/{suite}/seconds": seconds,
                }
            )
            tracker.log_artifact(out_dir / suite / "predictions.jsonl", f"predictions/{suite}")


if __name__ == "__main__":
    p = cli.parser("Evaluate a model on the test suites.")
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--suites", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    cli.run(main, p)
