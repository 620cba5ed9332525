"""Training on 2 CPU processes (torchrun, gloo) follows the 1-process loss curve at the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import PYTHON, ROOT, tiny_config, write_data_dir

pytestmark = pytest.mark.slow
# The two runs sum the same per-token losses in a different order (per process, then all-reduced): float32
# rounding only, so the curves agree to about 1e-6; 1e-4 relative leaves room and still catches a wrong
# normalisation (a 2x error) or a process training on the wrong rows.
RTOL = 1e-4


def curve(out_dir) -> dict[int, float]:
    """The logged loss by step."""
    return {r["step"]: r["train/loss"] for r in map(json.loads, (out_dir / "history.jsonl").read_text().splitlines())}


def run_stage(stage, job, data, out, processes, extra=()):
    launcher = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [PYTHON]
    cmd = [*launcher, "-m", f"atp.stages.{stage}", "--config", str(job), "--method", stage_method[stage], "--data-dir", str(data),
           "--out-dir", str(out), "--checkpoint-dir", str(out) + "_ckpt", "--threads", "1", "--no-tracking", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]


stage_method = {"sft": "cot_sft", "latent_sft": "coconut"}


def test_two_processes_follow_the_one_process_curve(tiny_data, tmp_path):
    from atp import config

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok, names=("train",))
    job = tmp_path / "job.yaml"
    config.dump(
        tiny_config(
            train={"steps": 8, "batch_size": 8, "log_every": 2, "val_samples": 0},
            latent={"c": 1, "max_steps": 2, "stage_steps": 3, "decoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}},
            methods={"cot_sft": {"stage": "sft", "format": "cot"}, "coconut": {"stage": "latent_sft", "variant": "coconut"}},
        ),
        job,
    )
    for processes in (1, 2):
        run_stage("sft", job, data, tmp_path / f"sft{processes}", processes)
    one, two = curve(tmp_path / "sft1"), curve(tmp_path / "sft2")
    assert list(one) == list(two) == [2, 4, 6, 8]
    assert two == pytest.approx(one, rel=RTOL)
    # The latent stage (Coconut: no sampled latents, so the curves are comparable step by step) from that model.
    init = ["--init", str(tmp_path / "sft1" / "model")]
    for processes in (1, 2):
        run_stage("latent_sft", job, data, tmp_path / f"latent{processes}", processes, init)
    one, two = curve(tmp_path / "latent1"), curve(tmp_path / "latent2")
    assert list(one) == list(two) == [2, 4, 6, 8]
    assert two == pytest.approx(one, rel=RTOL)
