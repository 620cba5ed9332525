"""The device check (scripts/gpu_check.py) runs its three parts end to end at tiny size on the CPU."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PYTHON, ROOT


@pytest.mark.slow
def test_gpu_check_tiny_measures_every_part(tmp_path):
    out = tmp_path / "check.json"
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--device", "cpu", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"sft", "latent", "rl"} and "errors" not in report and "skipped" not in report
    for part in (parts["sft"], parts["latent"], parts["latent"]["sft_step"], parts["rl"]):
        assert part["tokens_per_s"] > 0 and part["seconds_per_step"] > 0 and part["peak_memory_mb"] > 0
        assert part["mfu"] is None  # no peak FLOP/s on a CPU
    # The paper's latent budget (c=2, S=10) and GRPO shape (groups of G rollouts, one update per minibatch).
    assert parts["latent"]["slots"] == 20
    assert parts["rl"]["rollouts"] == parts["rl"]["questions"] * parts["rl"]["group_size"]
    assert parts["rl"]["updates_per_step"] == parts["rl"]["rollouts"] // parts["rl"]["minibatch_size"]
    assert 0 <= parts["rl"]["latents_per_trajectory"] <= 20
    # config/paper.yaml's step decoder: a copy of the backbone, as many parameters, none of them trained by RL.
    params = parts["latent"]["parameters"]
    assert report["decoder"] == "copy" and params["decoder"] == params["backbone"]
    assert parts["rl"]["trainable_parameters"] <= params["total"] - params["decoder"]
    # The latent-SFT step's FLOPs count the decoder over its own tokens (c latents + the target, S steps a row).
    assert parts["latent"]["sft_step"]["decoder_tokens_per_step"] >= 4 * 10 * 3


def test_gpu_check_budget_skips_parts_and_still_writes_its_json(tmp_path):
    """With --budget 0 no part starts: the JSON still says what ran (nothing) and what was skipped."""
    out = tmp_path / "check.json"
    subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--device", "cpu", "--budget", "0", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["parts"] == {} and report["skipped"] == ["sft", "latent", "rl"]
