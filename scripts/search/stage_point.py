"""One point of a search over any method: its pipeline stage run by hand, scored on validation.

    python scripts/search/stage_point.py --method icot --overrides '{"removal": {"every": 60}}' --seed 0 \
        --init results/default/train/cot_sft/seed0/model --data-dir results/default/data \
        --out-dir /tmp/points/icot_e60_s0 --results docs/experiments/new-methods-results-2026-12-06.jsonl

Takes the method's settings from config/config.yaml (or --config), merges the overrides over them
(`methods.<name>` keys: `train`, `latent`, `removal`, ...), writes that job's config and runs the method's own
stage (`python -m atp.stages.<stage>`, one thread, no MLflow), as the pipeline's train rule would. The stage ends by
decoding the validation split (`val/accuracy`, and `val/accuracy_sample` for sampled latents); the point's line
(method, seed, overrides, exit code, the validation metrics, training seconds) is printed and appended to --results.
Only the validation split is read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from atp import config
    from atp.data.records import append_jsonl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--overrides", default="{}", help="JSON merged over methods.<method>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    p.add_argument("--init", default=None, help="the starting model (default: none, the base model)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--results", default=None, help="append the point's line here")
    args = p.parse_args(argv)
    overrides = json.loads(args.overrides)
    cfg = config.load(args.config)
    cfg["methods"][args.method] = config.merge(cfg["methods"][args.method], overrides)
    resolved = config.resolve(cfg)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.dump(config.job_config(resolved, f"train_{args.method}"), out / "job.yaml")
    stage = resolved["methods"][args.method]["stage"]
    command = [sys.executable, "-m", f"atp.stages.{stage}", "--config", str(out / "job.yaml"), "--method", args.method]
    command += ["--seed", str(args.seed), "--data-dir", args.data_dir, "--out-dir", str(out)]
    command += ["--checkpoint-dir", str(out / "checkpoints"), "--threads", "1", "--no-tracking"]
    command += ["--init", args.init] if args.init else []
    started = time.time()
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    metrics = json.loads((out / "metrics.json").read_text()) if rc == 0 else {}
    line = {"name": out.name, "method": args.method, "seed": args.seed, "overrides": overrides, "rc": rc}
    line.update({k: v for k, v in metrics.items() if k.startswith("val/")})
    line["seconds"] = round(time.time() - started, 1)
    print(append_jsonl(args.results, line) if args.results else json.dumps(line, sort_keys=True), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
