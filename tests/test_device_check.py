"""scripts/device_check.sh, the first-GPU check, in its CPU mode: every step runs and writes its result, so that the
command cannot rot before a GPU arrives. Also the wheel list it installs on a GPU image, against the lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT


@pytest.mark.slow
def test_device_check_cpu_mode_runs_every_step(tmp_path):
    # A copy of the repository's code, so that the check's results/ lands in the copy.
    repo = tmp_path / "repo"
    for part in ("atp", "workflow", "config", ".test", "scripts", "profiles"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": PYTHON, "DEVICE_CHECK_OUT": str(out), "WHEELS": str(tmp_path / "no-wheels")}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "device_check.sh"), "--cpu"], capture_output=True, text=True, timeout=900, env=env
    )
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, (summary, result.stdout[-3000:], result.stderr[-3000:])
    assert set(summary) == {"env", "bf16_rl", "gpu_check", "dag"}
    assert all(s["status"] == 0 and not s["timed_out"] for s in summary.values()), summary
    machine = json.loads((out / "env.json").read_text())
    assert machine["packages"]["torch"] and machine["cuda_available"] in (True, False)
    bf16 = json.loads((out / "bf16_rl.json").read_text())
    assert bf16["ok"] and bf16["first_clip_fraction"] == 0.0 and bf16["first_max_abs_log_ratio"] < 1e-4
    check = json.loads((out / "gpu_check.json").read_text())
    assert set(check["parts"]) == {"sft", "rl"} and "errors" not in check
    table = (out / "dag" / "table.md").read_text()
    assert "ATP-Latent (RL)" in table and (out / "dag" / "benchmarks").is_dir()
    # The DAG ran under bf16 (the overlay the check writes), in its own results folder.
    job = (repo / "results" / "device_check_cpu" / "configs" / "train_atp_rl.yaml").read_text()
    assert "bf16: true" in job


def test_the_device_wheels_are_the_locks_versions():
    """scripts/device_wheels.txt (what a stock CUDA image lacks) pins the versions of requirements.lock."""
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    wheels = [line for line in (ROOT / "scripts" / "device_wheels.txt").read_text().splitlines() if line and line[0] != "#"]
    assert len(wheels) > 10
    names = set()
    for line in wheels:
        name, version = line.split("==")
        names.add(canonicalize_name(name))
        assert lock.get(canonicalize_name(name)) == version, line
    assert {"snakemake", "datasets", "jsonschema"} <= names and "torch" not in names and "mlflow" not in names
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "device_wheels.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "device_check.sh")], check=True)
