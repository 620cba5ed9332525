"""The results table: the paper's row order and the spread of sampled-latent evaluations."""

from __future__ import annotations

import pytest

from atp.stages.table import aggregate


def metric(method, suite, accuracy, runs=None, seed=0):
    m = {"method": method, "suite": suite, "seed": seed, "accuracy": accuracy, "tokens": 10.0}
    if runs is not None:
        m.update(accuracy_runs=runs, accuracy_std=(max(runs) - min(runs)) / 2, latents=4.0)
    return m


def test_rows_follow_baselines_controls_then_latent_methods():
    methods = {
        "atp": {"stage": "latent_sft", "variant": "atp"},
        "pause": {"stage": "latent_sft", "variant": "pause"},
        "nocot_ft": {"stage": "sft", "format": "nocot", "init": "cot_sft"},
        "nocot_sft": {"stage": "sft", "format": "nocot"},
        "cot_sft": {"stage": "sft", "format": "cot"},
        "atp_no_vae": {"stage": "latent_sft", "variant": "atp_no_vae"},
        "atp_rl": {"stage": "rl", "init": "atp"},
    }
    metrics = [metric(name, "test", 0.5) for name in methods]
    frame, _ = aggregate(metrics, methods)
    assert list(frame["method"]) == ["cot_sft", "nocot_sft", "nocot_ft", "pause", "atp", "atp_rl", "atp_no_vae"]


def test_one_seed_reports_the_spread_of_the_sampled_evaluations():
    metrics = [metric("atp", "test", 0.5, runs=[0.4, 0.6]), metric("atp", "easy", 0.7, runs=[0.6, 0.8])]
    frame, _ = aggregate(metrics, {"atp": {"stage": "latent_sft", "variant": "atp"}})
    row = frame.iloc[0]
    assert row["test_acc_std"] == pytest.approx(10.0) and row["avg_acc_std"] == pytest.approx(10.0)
    assert row["test_latents"] == pytest.approx(4.0)
