"""config/gpu_miniature.yaml, the GPU-sized miniature: its sizing claims and its dry run (no GPU needed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT, job_counts


def configs():
    from atp import config

    default = config.load(ROOT / "config" / "config.yaml")
    gpu = config.load(ROOT / "config" / "config.yaml", ROOT / "config" / "gpu_miniature.yaml")
    config.check_pipeline(gpu)
    return default, gpu


def backbone_parameters(cfg: dict) -> int:
    """The built Llama's parameters at the tokenizer's largest vocabulary (on the meta device: nothing allocated)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg["model"]
    with torch.device("meta"):
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=m["vocab_size"],
                hidden_size=m["hidden_size"],
                intermediate_size=m["intermediate_size"],
                num_hidden_layers=m["num_layers"],
                num_attention_heads=m["num_heads"],
                num_key_value_heads=m["num_heads"],
                tie_word_embeddings=m["tie_word_embeddings"],
            )
        )
    return sum(p.numel() for p in model.parameters())


def test_the_gpu_miniature_is_about_a_thousand_times_the_cpu_miniature_at_width_96_in_bf16():
    """The header's numbers: tens of millions of parameters, ~1000x the compute of CoT-SFT and of the scaling study's
    1x latent stage at width 96, the unit it was sized against (the default's latent stage is its 4x: ~250x that;
    the default's own backbone, width 128 since 2026-12-01, is 1.18M)."""
    from atp.config import method_rl, method_train

    default, gpu = configs()
    assert round(backbone_parameters(default) / 1e4) == 118
    default = {**default, "model": {**default["model"], "hidden_size": 96, "intermediate_size": 384}}
    n_cpu, n_gpu = backbone_parameters(default), backbone_parameters(gpu)
    assert 10e6 <= n_gpu < 100e6 and round(n_gpu / 1e4) == 3408 and round(n_cpu / 1e3) == 687

    def compute(cfg, method):  # 6N per trained token; the generator's token lengths are the same in both
        train = method_train(cfg, method)
        return train["steps"] * train["batch_size"] * backbone_parameters(cfg)

    for method in ("cot_sft", "nocot_sft"):
        assert 900 <= compute(gpu, method) / compute(default, method) <= 1100, method
    for method in ("coconut", "codi", "simcot", "atp", "atp_cvae"):  # the default's latent stage: 4x the study's unit
        assert 900 <= 4 * compute(gpu, method) / compute(default, method) <= 1100, method
    # The controls get as many optimizer steps as ATP-Latent (RL) in all: latent steps + RL steps x updates per step.
    rl = method_rl(gpu, "atp_rl")
    updates = method_train(gpu, "atp_rl")["steps"] * rl["questions"] * rl["group_size"] // rl["minibatch_size"]
    for control in ("nocot_ft", "pause", "icot"):  # iCoT gets the controls' budget
        assert method_train(gpu, control)["steps"] == method_train(gpu, "atp")["steps"] + updates
    assert 4 * gpu["latent"]["stage_steps"] == method_train(gpu, "atp")["steps"]  # a quarter per stage, as the default
    assert gpu["train"]["bf16"] and gpu["eval"]["bf16"] and not default["train"]["bf16"]
    assert gpu["data"]["train"]["n"] > default["data"]["train"]["n"]


@pytest.mark.slow
def test_the_gpu_miniature_dry_runs_every_method_one_gpu_job_at_a_time_per_slot(tmp_path):
    """scripts/gpu_miniature.sh --dry-run: the whole DAG, each training a one-process `python -m` job (no accelerate)."""
    shutil.copytree(ROOT / "config", tmp_path / "config")  # the Snakefile's config/config.yaml is read in the working directory
    env = {**os.environ, "PYTHON": PYTHON}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_miniature.sh"), "--dry-run", "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = job_counts(done.stdout)
    # CoT-SFT, No-CoT, both controls, iCoT, Coconut, CODI, CoLaR, SIM-CoT, ATP-Latent and its CVAE policy, five RL runs
    # (CoLaR's too), CoT + RL and the four frozen controls; CoLaR-5 evaluates CoLaR's model.
    assert counts["train"] == 21 and counts["evaluate"] == 18 and counts["prepare_data"] == 1 and counts["table"] == 1
    # gpu=1 per job: atp.launch runs `python -m atp.stages.<stage>` in one process, not accelerate.
    assert done.stdout.count("python -m atp.launch --gpus 1 ") == 21
    assert "results/gpu_miniature/train/atp/seed0/model" in done.stdout
    assert not (tmp_path / "results").exists()  # a dry run
