"""Shared test set-up: offline hub switches, a tiny config, and tiny data/tokenizer fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


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
    """(config, splits, tokenizer) for the tiny config, built once per session."""
    from atp.stages.prepare_data import build_splits, make_tokenizer

    cfg = tiny_config()
    splits, _ = build_splits(cfg)
    return cfg, splits, make_tokenizer(cfg, splits["train"])


def write_data_dir(folder: Path, splits: dict, tokenizer, names=("train", "val")) -> Path:
    """A prepared-data folder as data prep leaves it (the named splits and the tokenizer), for stage CLIs."""
    from atp.data.records import write_jsonl

    for name in names:
        write_jsonl(folder / f"{name}.jsonl", splits[name])
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder
