"""Shared test set-up: offline hub switches, a tiny config, and tiny data/tokenizer fixtures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"


class Recorder:
    """A tracker stand-in that keeps what was logged (the trainer's only use of the tracker)."""

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def tiny_config(**overrides) -> dict:
    """A resolved pipeline config small enough to train in a second."""
    from atp import config

    raw = {
        "experiment": "unit",
        "data": {
            "synthetic": {"n": 20, "max_quantity": 20},
            "train": {"source": "synthetic", "n": 200},
            "val": {"source": "synthetic", "n": 20},
        },
        "model": {"vocab_size": 200, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "train": {"steps": 6, "batch_size": 8, "log_every": 2, "checkpoint_every": 3, "val_samples": 0},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config.resolve(raw)


@pytest.fixture(scope="session")
def tiny_data():
    """(config, splits, tokenizer) for the tiny config, built once per test run."""
    from atp.stages.prepare_data import build_splits, make_tokenizer

    cfg = tiny_config()
    splits, _, _ = build_splits(cfg)
    return cfg, splits, make_tokenizer(cfg, splits["train"])


def write_data_dir(folder: Path, splits: dict, tokenizer, names=("train", "val")) -> Path:
    """A prepared-data folder as data prep leaves it (the named splits and the tokenizer), for stage CLIs."""
    from atp.data.records import write_jsonl

    for name in names:
        write_jsonl(folder / f"{name}.jsonl", splits[name])
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def stage_argv(job, method: str, data, out, *extra) -> list[str]:
    """A training stage's arguments for a test job: its config, method, data, output and checkpoint folders, no MLflow."""
    return [
        "--config",
        str(job),
        "--method",
        method,
        "--data-dir",
        str(data),
        "--out-dir",
        str(out),
        "--checkpoint-dir",
        str(out) + "_ckpt",
        "--no-tracking",
        *extra,
    ]


def snakemake_cmd(workdir, *args, extra_config: str | None = None, configs: list | None = None) -> list[str]:
    """The Snakemake command line in `workdir` for the test config (or `configs`, merged in order over
    config/config.yaml); `extra_config` (YAML text) is merged over them."""
    configs = [str(c) for c in configs or [TEST_CONFIG]]
    if extra_config is not None:
        (workdir / "extra.yaml").write_text(extra_config)
        configs.append(str(workdir / "extra.yaml"))
    return [
        PYTHON,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        *configs,
        "--cores",
        "2",
        *args,
    ]


def snakemake(workdir, *args, extra_config: str | None = None, configs: list | None = None, check=True, env=None):
    """Run Snakemake on the test config in `workdir` (see snakemake_cmd), with `env` added to the environment;
    raise with its output if it fails."""
    cmd = snakemake_cmd(workdir, *args, extra_config=extra_config, configs=configs)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table."""
    counts = {}
    block = dry_run_output.split("Job stats:", 1)[1] if "Job stats:" in dry_run_output else ""
    for line in block.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts
