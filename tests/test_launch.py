"""Launching training on N processes from the workflow: the `train` rule's accelerate command, the strategy a launch
asks for, and what the stages refuse."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import PYTHON, ROOT
from conftest import snakemake as run_snakemake


def snakemake(workdir, *args):
    """Snakemake on the test config in `workdir` (conftest's command line); its whole output."""
    result = run_snakemake(workdir, *args)
    return result.stdout + result.stderr


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def test_check_launch_refuses_deepspeed_and_fsdp_for_rl():
    from atp.config import ConfigError
    from atp.launch import check_launch, strategy

    for stage in ("sft", "latent_sft", "rl"):
        check_launch(stage, {})
        check_launch(stage, {"ACCELERATE_USE_FSDP": "false", "ACCELERATE_MIXED_PRECISION": "no"})
        with pytest.raises(ConfigError, match="DeepSpeed"):
            check_launch(stage, {"ACCELERATE_USE_DEEPSPEED": "True"})
    # FSDP: the SFT stages shard (atp/sharding.py); the RL update all-reduces whole gradients and refuses it.
    check_launch("sft", {"ACCELERATE_USE_FSDP": "true"})
    check_launch("latent_sft", {"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ConfigError, match="the rl stage runs data-parallel \\(DDP\\) only .*workflow/accelerate/ddp.yaml"):
        check_launch("rl", {"ACCELERATE_USE_FSDP": "true"})
    assert strategy(2, {"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert strategy(2, {}) == strategy(2, {"ACCELERATE_USE_FSDP": "false"}) == "ddp"
    assert strategy(1, {}) == strategy(1, {"ACCELERATE_USE_FSDP": "true"}) == "single"


def test_the_launcher_runs_one_process_or_accelerate_on_n(tmp_path):
    """atp.launch picks the launcher from the gpu resource: this interpreter for 0 or 1, accelerate launch for more."""
    from atp.config import ConfigError
    from atp.launch import ACCELERATE_CONFIGS, command

    args = ["--config", "job.yaml", "--seed", "0"]
    for gpus in (0, 1):
        assert command("atp.stages.sft", args, gpus, environ={}) == [PYTHON, "-m", "atp.stages.sft", *args]
    launch = command("atp.stages.rl", args, 4, "fsdp", environ={})
    assert launch == [
        PYTHON,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / "fsdp.yaml"),
        "--num_processes",
        "4",
        "-m",
        "atp.stages.rl",
        *args,
    ]
    (tmp_path / "mine.yaml").write_text("distributed_type: MULTI_GPU\n")
    assert command("m", [], 2, "mine", environ={"ATP_ACCELERATE_CONFIGS": str(tmp_path)})[4] == str(tmp_path / "mine.yaml")
    with pytest.raises(ConfigError, match="resources.accelerate=deepspeed"):
        command("m", [], 2, "deepspeed", environ={})
    # For real, on one process: the launcher becomes the module (its output and exit status are the module's).
    config = str(ROOT / "config" / "config.yaml")

    def run(*argv):
        return subprocess.run([PYTHON, "-m", *argv], capture_output=True, text=True)

    ran = run("atp.launch", "--gpus", "0", "--accelerate", "ddp", "atp.config", config)
    assert ran.returncode == 0 and ran.stdout == run("atp.config", config).stdout
    failed = run("atp.launch", "--gpus", "1", "atp.config", str(tmp_path / "missing.yaml"))
    assert failed.returncode != 0 and "config file not found" in failed.stderr


@pytest.mark.slow
def test_the_dry_run_launches_training_through_one_command(workdir):
    out = snakemake(workdir, "-n", "-p", "--set-resources", "train:gpu=2")
    assert out.count("python -m atp.launch --gpus 2 --accelerate ddp atp.stages.") == 8  # the 8 trainings of the test config
    fsdp = snakemake(workdir, "-n", "-p", "--set-resources", "train:gpu=4", "train:accelerate=fsdp")
    assert "python -m atp.launch --gpus 4 --accelerate fsdp atp.stages.sft" in fsdp
    out = snakemake(workdir, "-n", "-p")
    assert out.count("python -m atp.launch --gpus 0 --accelerate ddp atp.stages.") == 8 and " if [" not in out


@pytest.mark.slow
def test_a_training_job_runs_on_two_processes_through_accelerate(workdir):
    """CoT-SFT of the test config with train:gpu=2 on this CPU machine: accelerate starts 2 gloo processes."""
    snakemake(workdir, "results/test/train/cot_sft/seed0/metrics.json", "--set-resources", "train:gpu=2")
    run = workdir / "results" / "test" / "train" / "cot_sft" / "seed0"
    log = (workdir / "results" / "test" / "logs" / "train" / "cot_sft" / "seed0.log").read_text()
    assert log.count("cot_sft: 30240 parameters") == 2  # both processes started
    assert (run / "model" / "model.safetensors").exists() and "train/loss" in json.loads((run / "metrics.json").read_text())
    assert [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()] == [4, 8, 12]  # one writer
    # The launcher is a resource, not a parameter: running the same target on one process reruns nothing.
    assert "Nothing to be done" in snakemake(workdir, "results/test/train/cot_sft/seed0/metrics.json", "-n")
