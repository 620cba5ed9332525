"""Run RL settings from one starting model side by side and collect their validation accuracy.

    python scripts/search/rl_search.py --grid docs/experiments/rl-grid.jsonl --init results/default/train/atp/seed0/model \
        --data-dir results/default/data --root /tmp/rl_search --out docs/experiments/rl-results.jsonl --lanes 2

Each grid line: {"name", "train": {...}, "rl": {...}}, overrides merged over the `--method`
of config/config.yaml (atp_rl from an ATP-Latent (SFT) model, cot_rl from a CoT-SFT model), and optionally
"seed" and "init" (the point's starting model, for seeds whose SFT models differ; default --init). A point
starts once its starting model exists, so a grid can wait for a model still training beside it.
Every point runs the pipeline's own RL stage (`python -m atp.stages.rl`, one thread, no MLflow) and is scored on the
validation split only. A results line holds the point, its validation accuracy
(mu and sampled latents), tokens, its sampling headroom (pass@1, pass@k,
vote@k, uniform groups), the mean rollout reward, accuracy and group diversity
of its first and last 25 RL steps, its gradient diagnostics, and (when the grid holds a
point with `"rl": {"frozen": true}` on the same schedule) its reward over the last
quarter against that frozen policy, step by step, with a standard error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def job(point: dict, method: str) -> dict:
    """The RL job config of one grid point: the method's settings in config/config.yaml with the point's overrides."""
    from atp import config

    cfg = config.load(ROOT / "config" / "config.yaml")
    spec = cfg["methods"][method]
    cfg["methods"][method] = {
        **spec,
        "train": {**spec.get("train", {}), **point.get("train", {})},
        "rl": config.merge(spec.get("rl", {}), point.get("rl", {})),
    }
    return config.job_config(config.resolve(cfg), f"train_{method}")


def job_config(point: dict, method: str, out: Path) -> Path:
    from atp import config

    path = out / "job.yaml"
    config.dump(job(point, method), path)
    return path


def summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    window = lambda rs, k: round(statistics.fmean(r[k] for r in rs), 4)  # noqa: E731
    # Validation: accuracy, tokens, fidelity, and the sampling headroom (pass@1, pass@k, vote@k, uniform groups).
    headroom = ("val/pass_at_", "val/vote_at_", "val/uniform_groups", "val/distinct_answers")
    out = {
        k: metrics[k]
        for k in sorted(metrics)
        if k in ("val/accuracy", "val/accuracy_sample", "val/tokens", "val/fidelity") or k.startswith(headroom)
    }
    # The rollouts: reward, accuracy, and whether their groups differ (zero-advantage groups, distinct chains,
    # answers and valid chains per group, the latent noise over |mu|).
    rollout = ("rewards/total/mean", "rewards/coherence/mean", "rl/accuracy", "rl/latents", "rl/zero_advantage_groups")
    rollout += ("rl/distinct_chains", "rl/distinct_answers", "rl/distinct_valid_chains", "rl/noise_over_mu")
    rollout += ("rl/informative_groups",)
    for part, rs in (("first25", rows[:25]), ("last25", rows[-25:])):
        out.update({f"{part}/{k}": window(rs, k) for k in rollout if all(k in r for r in rs)})
    quarter = rows[int(len(rows) * 0.75) :]
    out["last_quarter/rewards/total/mean"] = window(quarter, "rewards/total/mean")
    # Gradient diagnostics (every rl.diagnostics_every steps) and the first minibatch's clip fraction, averaged over the run.
    keys = sorted({k for r in rows for k in r if k.startswith(("rl/grad_norm/", "rl/grad_cosine/", "rl/first_"))})
    out.update({f"mean/{k}": window([r for r in rows if k in r], k) for k in keys})
    return out


def against_frozen(results: list[dict], root: Path, method: str = "atp_rl") -> None:
    """Each point's total reward against a frozen point of the same schedule, step by step over the last quarter."""
    from atp.stages.report import against_frozen as paired

    frozen = {
        json.dumps(schedule(r, method), sort_keys=True): r["name"]
        for r in results
        if r.get("rl", {}).get("frozen") and r.get("returncode") == 0
    }
    for r in results:
        control = frozen.get(json.dumps(schedule(r, method), sort_keys=True))
        if r.get("rl", {}).get("frozen") or control is None or r.get("returncode") != 0:
            continue
        history = lambda name: [json.loads(line) for line in (root / name / "history.jsonl").read_text().splitlines()]  # noqa: E731
        (row,) = paired({(r["name"], 0): history(r["name"])}, {(control, 0): history(control)}) or [None]
        if row:
            r.update(
                {
                    "vs_frozen/control": control,
                    "vs_frozen/difference": round(row["difference"], 4),
                    "vs_frozen/standard_error": round(row["standard_error"], 4),
                }
            )


def schedule(point: dict, method: str = "atp_rl") -> dict:
    """What fixes the question schedule of an RL run and its rollouts' distribution at the start: seed, steps,
    questions per step (and the dynamic sampling's oversampling), the two sampling temperatures (a frozen control
    must sample as the run does). Read from the resolved settings, so a point that states a default and one that
    leaves it out have the same schedule."""
    from atp.rl.grpo import rl_settings

    settings = job(point, method)
    rl, _ = rl_settings(settings)
    return {
        "seed": point.get("seed", 0),
        "steps": settings["train"]["steps"],
        "questions": rl.questions,
        "oversample": rl.oversample,
        "temperature": rl.temperature,
        "latent_temperature": rl.latent_temperature,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", required=True)
    p.add_argument("--init", help="the starting model of every point without its own init")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="atp_rl")
    p.add_argument("--lanes", type=int, default=2)
    args = p.parse_args()
    points = [json.loads(line) for line in Path(args.grid).read_text().splitlines() if line.strip() and not line.startswith("#")]
    for point in points:
        point.setdefault("init", args.init)  # resolved once: every use below reads point["init"]
        if point["init"] is None:
            sys.exit(f"{args.grid}: point {point['name']} has no init and no --init was given")
    root = Path(args.root)
    pending, running, results = list(points), {}, []
    while pending or running:
        # A point starts, in grid order, once its starting model exists (one may still be training beside the search).
        ready = [q for q in pending if (Path(q["init"]) / "meta.json").exists()]
        while ready and len(running) < args.lanes:
            point = ready.pop(0)
            pending.remove(point)
            run = root / point["name"]
            run.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "atp.stages.rl",
                "--config",
                str(job_config(point, args.method, run)),
                "--method",
                args.method,
                "--seed",
                str(point.get("seed", 0)),
                "--data-dir",
                args.data_dir,
                "--out-dir",
                str(run),
                "--checkpoint-dir",
                str(run / "ckpt"),
                "--init",
                point["init"],
                "--threads",
                "1",
                "--no-tracking",
            ]
            log = open(run / "log.txt", "w")
            running[point["name"]] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), point, time.time())
        if pending and not running and not ready:
            missing = sorted({q["init"] for q in pending})
            print(f"waiting for starting models: {', '.join(missing)}", file=sys.stderr, flush=True)
            time.sleep(55)
        time.sleep(5)
        for name, (proc, point, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            line = {
                **point,
                "seconds": round(time.time() - started, 1),
                "returncode": proc.returncode,
            }
            if proc.returncode == 0:
                line.update(summary(root / name))
            results.append(line)
            print(json.dumps(line, sort_keys=True), flush=True)
    against_frozen(results, root, args.method)  # once every point (and its frozen control) has finished
    with open(args.out, "a", encoding="utf-8") as handle:
        for line in results:
            handle.write(json.dumps(line, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
