"""Run RL settings from one ATP-Latent (SFT) model side by side and collect their validation accuracy.

    python scripts/rl_search.py --grid docs/search/rl-grid.jsonl --init results/default/train/atp/seed0/model \
        --data-dir results/default/data --root /tmp/rl_search --out docs/search/rl-results.jsonl --lanes 2

Each grid line: {"name", "train": {...}, "rl": {...}}, overrides merged over the atp_rl
method of config/config.yaml. Every point runs the pipeline's own RL stage
(`python -m atp.stages.rl`, one thread, no MLflow) and is scored on the
validation split only. A results line holds the point, its validation accuracy
(mu and sampled latents), tokens and the mean rollout reward and accuracy of its
first and last 25 RL steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def job_config(point: dict, method: str, out: Path) -> Path:
    from atp import config

    cfg = config.load(ROOT / "config" / "config.yaml")
    spec = cfg["methods"][method]
    cfg["methods"][method] = {**spec, "train": {**spec.get("train", {}), **point.get("train", {})}, "rl": config.merge(spec.get("rl", {}), point.get("rl", {}))}
    cfg = config.resolve(cfg)
    job = config.job_config(cfg, f"train_{method}")
    path = out / "job.yaml"
    config.dump(job, path)
    return path


def summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    window = lambda rs, k: round(statistics.fmean(r[k] for r in rs), 4)  # noqa: E731
    out = {k: metrics[k] for k in ("val/accuracy", "val/accuracy_sample", "val/tokens", "val/fidelity") if k in metrics}
    for part, rs in (("first25", rows[:25]), ("last25", rows[-25:])):
        out.update({f"{part}/{k}": window(rs, k) for k in ("rewards/total/mean", "rewards/coherence/mean", "rl/accuracy", "rl/latents")})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="atp_rl")
    p.add_argument("--lanes", type=int, default=2)
    args = p.parse_args()
    points = [json.loads(line) for line in Path(args.grid).read_text().splitlines() if line.strip() and not line.startswith("#")]
    root = Path(args.root)
    pending, running = list(points), {}
    while pending or running:
        while pending and len(running) < args.lanes:
            point = pending.pop(0)
            run = root / point["name"]
            run.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "atp.stages.rl", "--config", str(job_config(point, args.method, run)), "--method", args.method,
                   "--seed", str(point.get("seed", 0)), "--data-dir", args.data_dir, "--out-dir", str(run), "--checkpoint-dir", str(run / "ckpt"),
                   "--init", args.init, "--threads", "1", "--no-tracking"]
            log = open(run / "log.txt", "w")
            running[point["name"]] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), point, time.time())
        time.sleep(5)
        for name, (proc, point, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            line = {**point, "seconds": round(time.time() - started, 1), "returncode": proc.returncode}
            if proc.returncode == 0:
                line.update(summary(root / name))
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")
            print(json.dumps(line, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
