"""Run a grid of `latent_search.py` (or `stage_point.py`) points side by side, within a deadline.

    python scripts/search/run_grid.py --grid docs/experiments/grid.jsonl --root .search --out results.jsonl \
        --cpu-lanes 16 --gpu-lanes 2 --deadline 500

Each grid line: {"name", "data" (folder under --root), "init" (model folder under
--root, or null for a new model), "save" (folder under --root, or null),
"setting" (see latent_search.py), "lane" ("cpu", "gpu" or "any")}; a line with "method", "seed" and "overrides"
instead of "setting" runs that pipeline method's own stage (stage_point.py, with the settings of the line's "config",
config/config.yaml if none; its folder goes under <root>/points/). A point starts
when its init model exists, in file order; at the deadline the points still
running are stopped (their lines are missing from --out). Each point's log tail
goes to <out>.logs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def command(point: dict, root: Path, out: str, lane: str) -> list[str]:
    """The point's command line: the method's pipeline stage (stage_point.py) or a latent_search.py setting."""
    here = Path(__file__).resolve().parent
    if "method" in point:
        cmd = [sys.executable, str(here / "stage_point.py"), "--method", point["method"], "--seed", str(point["seed"])]
        cmd += ["--overrides", json.dumps(point.get("overrides", {})), "--data-dir", str(root / point["data"])]
        cmd += ["--out-dir", str(root / "points" / point["name"]), "--results", out]
        cmd += ["--config", point["config"]] if point.get("config") else []
        return cmd + (["--init", str(root / point["init"])] if point.get("init") else [])
    cmd = [sys.executable, str(here / "latent_search.py"), "--data-dir", str(root / point["data"])]
    cmd += ["--setting", json.dumps(point["setting"]), "--out", out, "--device", "cuda" if lane == "gpu" else "cpu"]
    cmd += ["--threads", "1", "--checkpoint-dir", f"/tmp/grid_ckpt/{point['name']}", "--name", point["name"]]
    if point.get("init"):
        cmd += ["--init", str(root / point["init"])]
    return cmd + (["--save", str(root / point["save"])] if point.get("save") else [])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-lanes", type=int, default=2)
    p.add_argument("--gpu-lanes", type=int, default=0)
    p.add_argument("--deadline", type=float, default=3600, help="seconds until everything still running is stopped")
    p.add_argument("--launch-until", type=float, default=None, help="no new point after this many seconds")
    args = p.parse_args()
    root = Path(args.root)
    points = [json.loads(line) for line in Path(args.grid).read_text().splitlines() if line.strip() and not line.startswith("#")]
    logs = Path("/tmp/grid_logs")
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, str, dict, float]] = {}
    pending = list(points)
    start = time.time()
    launch_until = args.launch_until if args.launch_until is not None else args.deadline
    capacity = {"cpu": args.cpu_lanes, "gpu": args.gpu_lanes}

    def used(lane: str) -> int:
        return sum(1 for _, other, _, _ in running.values() if other == lane)

    while (pending or running) and time.time() - start < args.deadline:
        for name, (proc, _lane, _point, t0) in list(running.items()):
            if proc.poll() is not None:
                print(
                    f"[{time.time() - start:6.0f}s] {name} finished rc={proc.returncode} in {time.time() - t0:.0f}s", flush=True
                )
                del running[name]
        if time.time() - start < launch_until:
            for point in list(pending):
                init = point.get("init")
                if init and not (root / init / "meta.json").exists():
                    continue
                wanted = "cpu" if "method" in point else point.get("lane", "any")
                lanes = ["gpu", "cpu"] if wanted == "any" else [wanted]
                lane = next((x for x in lanes if used(x) < capacity[x]), None)
                if lane is None:
                    continue
                cmd = command(point, root, args.out, lane)
                handle = open(logs / f"{point['name']}.log", "w")
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                running[point["name"]] = (
                    subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env),
                    lane,
                    point,
                    time.time(),
                )
                pending.remove(point)
                print(f"[{time.time() - start:6.0f}s] start {point['name']} on {lane}", flush=True)
        time.sleep(2)
    for name, (proc, _, _, _) in running.items():
        proc.kill()
        print(f"stopped {name} at the deadline", flush=True)
    for point in pending:
        print(f"not started: {point['name']}", flush=True)
    with open(args.out + ".logs", "w") as handle:
        for log in sorted(logs.glob("*.log")):
            lines = [line for line in log.read_text(errors="replace").splitlines() if "Warning" not in line]
            handle.write(f"==== {log.stem}\n" + "\n".join(lines[-15:]) + "\n")


if __name__ == "__main__":
    main()
