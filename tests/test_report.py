"""The report's pieces: curve smoothing, the choice of the policy to register (by validation only), the figures."""

from __future__ import annotations

import json

import matplotlib.image
import pandas as pd
import pytest

from atp.stages.report import (
    against_frozen,
    against_frozen_markdown,
    best_rl_run,
    moving_average,
    paired_controls,
    plot_accuracy_vs_tokens,
    plot_rl_curves,
)


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_the_registered_policy_is_the_best_on_validation_never_a_test_suite(tmp_path):
    runs = []
    for name, val, test in (("atp_rl", 0.50, 0.90), ("atp_rl_answer_only", 0.60, 0.10)):
        run = tmp_path / name / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"val/accuracy": val, "eval/test/accuracy": test}))
        runs.append(run)
    best, metrics = best_rl_run(runs)
    assert best.parent.name == "atp_rl_answer_only" and metrics["val/accuracy"] == 0.60


def test_the_figures_are_written(tmp_path):
    frame = pd.DataFrame(
        [
            {"label": "A", "avg_acc": 50.0, "avg_acc_std": 1.0, "avg_tokens": 9.0},
            {"label": "B", "avg_acc": 80.0, "avg_acc_std": 0.0, "avg_tokens": 26.0},
        ]
    )
    plot_accuracy_vs_tokens(frame, tmp_path / "a.png")
    history = [{"step": s, "rewards/total/mean": s / 10, "rewards/coherence/mean": 0.2, "rl/accuracy": 0.5} for s in range(1, 6)]
    runs = {("atp_rl", 0): history, ("atp_rl", 1): history, ("cot_rl", 0): history}
    controls = {("atp_rl_frozen", 0): history, ("atp_rl_frozen", 1): history, ("cot_rl_frozen", 0): history}
    starts = {("atp_rl", 0): "atp", ("atp_rl", 1): "atp", ("atp_rl_frozen", 0): "atp", ("atp_rl_frozen", 1): "atp"}
    starts |= {("cot_rl", 0): "cot_sft", ("cot_rl_frozen", 0): "cot_sft"}
    plot_rl_curves(runs, tmp_path / "b.png", controls=controls, starts=starts)
    plot_rl_curves({("atp_rl", 0): history}, tmp_path / "one.png", controls=controls, starts=starts)
    plot_rl_curves({}, tmp_path / "c.png")
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in ("a.png", "b.png", "c.png"))
    height = lambda name: matplotlib.image.imread(tmp_path / name).shape[0]  # noqa: E731
    assert height("b.png") > 1.8 * height("one.png")  # one row of panels per RL method


def test_each_rl_run_is_paired_with_the_frozen_control_of_its_seed_and_start():
    runs = {("atp_rl", 0): [], ("atp_rl", 1): [], ("cot_rl", 0): []}
    controls = {("atp_rl_frozen", 0): [], ("atp_rl_frozen", 1): [], ("cot_rl_frozen", 0): []}
    starts = {("atp_rl", 0): "atp", ("atp_rl", 1): "atp", ("atp_rl_frozen", 0): "atp", ("atp_rl_frozen", 1): "atp"}
    starts |= {("cot_rl", 0): "cot_sft", ("cot_rl_frozen", 0): "cot_sft"}
    assert paired_controls(runs, controls, starts) == [
        (("atp_rl", 0), ("atp_rl_frozen", 0)),
        (("atp_rl", 1), ("atp_rl_frozen", 1)),
        (("cot_rl", 0), ("cot_rl_frozen", 0)),
    ]


def test_a_resumed_run_rewrites_its_history_from_the_step_it_restarts_at(tmp_path):
    from atp.stages.common import History

    first = History(tmp_path / "history.jsonl")
    for step in (1, 2, 3):
        first(step, {"train/loss": float(step), "train/steps_per_s": 9.0})
    resumed = History(tmp_path / "history.jsonl")  # restarted from a checkpoint taken after step 1
    for step in (2, 3):
        resumed(step, {"train/loss": step + 0.5})
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 2.5}, {"step": 3, "train/loss": 3.5}]


def test_rl_runs_are_read_against_the_frozen_control_of_their_seed_step_by_step():
    """Hand-built: 8 steps; over the last quarter (steps 7, 8) the run beats its control by 0.1 and 0.3."""
    control = [{"step": t, "rewards/total/mean": 1.0 + (t % 2) * 0.5} for t in range(1, 9)]  # the question mix
    run = [
        {"step": t, "rewards/total/mean": r["rewards/total/mean"] + (0.1 if t == 7 else 0.3 if t == 8 else 0.0)}
        for t, r in zip(range(1, 9), control)
    ]
    rows = against_frozen({("atp_rl", 0): run, ("atp_rl", 1): run}, {("atp_rl_frozen", 0): control})
    assert len(rows) == 1 and rows[0]["control"] == "atp_rl_frozen (seed 0)" and rows[0]["steps"] == "7-8"
    assert rows[0]["difference"] == pytest.approx(0.2) and rows[0]["standard_error"] == pytest.approx(0.1)
    assert rows[0]["z"] == pytest.approx(2.0)
    text = against_frozen_markdown({"rewards/total/mean": rows})
    assert "| atp_rl (seed 0) | atp_rl_frozen (seed 0) | 7-8 | " in text and "+0.2000 | 0.1000 | +2.00 |" in text
    assert "no RL run" in text.split("## total reward")[0]  # no rollout-accuracy rows were given
    # With two frozen controls of one seed, each run is read against the control that started where it did.
    controls = {("atp_rl_frozen", 0): control, ("cot_rl_frozen", 0): control}
    starts = {("atp_rl", 0): "atp/seed0", ("atp_rl_frozen", 0): "atp/seed0", ("cot_rl", 0): "cot/seed0"}
    starts[("cot_rl_frozen", 0)] = "cot/seed0"
    rows = against_frozen({("atp_rl", 0): run, ("cot_rl", 0): run}, controls, starts=starts)
    assert sorted((r["run"], r["control"]) for r in rows) == [
        ("atp_rl (seed 0)", "atp_rl_frozen (seed 0)"),
        ("cot_rl (seed 0)", "cot_rl_frozen (seed 0)"),
    ]


def test_the_headroom_table_reads_pass_at_k_and_averages_the_rollout_diversity():
    from atp.stages.report import headroom_markdown, headroom_row

    metrics = {"val/accuracy": 0.81, "val/pass_at_1": 0.8, "val/pass_at_8": 0.9, "val/vote_at_8": 0.82, "val/uniform_groups": 0.5}
    history = [{"rl/zero_advantage_groups": 0.5, "rl/distinct_chains": 2.0}, {"rl/zero_advantage_groups": 1.0}]
    row = headroom_row("cot_rl (seed 0)", metrics, history)
    assert row["k"] == "8" and row["val/pass_at_k"] == 0.9 and row["val/vote_at_k"] == 0.82
    assert row["rl/zero_advantage_groups"] == 0.75 and row["rl/distinct_chains"] == 2.0 and "rl/noise_over_mu" not in row
    text = headroom_markdown([row, headroom_row("bare (seed 0)", {}, [])])
    assert "| run | val greedy / mu | pass@1 | pass@8 | vote@8 |" in text and "latent noise / mu" not in text
    assert "| cot_rl (seed 0) | 81.0 | 80.0 | 90.0 | 82.0 | 50.0 | 75.0 | 2.00 |" in text
    assert "| bare (seed 0) | - | - | - | - | - | - | - |" in text
