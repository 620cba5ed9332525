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
        "coconut": {"stage": "latent_sft", "variant": "coconut"},
        "icot": {"stage": "sft", "format": "icot", "init": "cot_sft"},  # an sft format, but an implicit method
        "colar_rl": {"stage": "rl", "init": "colar"},  # RL right after the model it starts from
        "colar": {"stage": "latent_sft", "variant": "colar"},
        "simcot": {"stage": "latent_sft", "variant": "simcot"},
    }
    metrics = [metric(name, "test", 0.5) for name in methods]
    frame, _ = aggregate(metrics, methods)
    expected = [
        "cot_sft",
        "nocot_sft",
        "nocot_ft",
        "pause",
        "icot",
        "coconut",
        "colar",
        "colar_rl",
        "simcot",
        "atp",
        "atp_rl",
        "atp_no_vae",
    ]
    assert list(frame["method"]) == expected


def test_one_seed_reports_the_spread_of_the_sampled_evaluations():
    metrics = [metric("atp", "test", 0.5, runs=[0.4, 0.6]), metric("atp", "easy", 0.7, runs=[0.6, 0.8])]
    frame, _ = aggregate(metrics, {"atp": {"stage": "latent_sft", "variant": "atp"}})
    row = frame.iloc[0]
    assert row["test_acc_std"] == pytest.approx(10.0) and row["avg_acc_std"] == pytest.approx(10.0)
    assert row["test_latents"] == pytest.approx(4.0)


def test_margins_over_the_better_control_and_simcot_carry_a_standard_error_over_seeds():
    """Two seeds, one suite: pause 50/52, No-CoT FT 40/40, SIM-CoT 54/56, ATP-Latent (RL) 60/64, paired by seed.

    RL minus pause: differences 10 and 12, +11 with SE std(10, 12) / sqrt(2) = 1.0; minus SIM-CoT: 6 and 8, +7 +- 1.0;
    SIM-CoT minus pause: 4 and 4, +4 +- 0.0 (unpaired, the seeds' spreads would have given 2.2, 2.2 and 1.4).
    """
    from atp.stages.table import margins_markdown

    methods = {
        "nocot_ft": {"stage": "sft", "format": "nocot", "init": "cot_sft", "label": "No-CoT FT"},
        "pause": {"stage": "latent_sft", "variant": "pause", "label": "Pause"},
        "simcot": {"stage": "latent_sft", "variant": "simcot", "label": "SIM-CoT"},
        "atp_rl": {"stage": "rl", "init": "atp", "label": "ATP (RL)"},
        "cot_sft": {"stage": "sft", "format": "cot", "label": "CoT-SFT"},
        "cot_rl": {"stage": "rl", "init": "cot_sft", "label": "CoT + RL"},  # a language row: no latent margin
        "icot": {"stage": "sft", "format": "icot", "init": "cot_sft", "label": "iCoT"},  # implicit: a margin
    }
    values = {"nocot_ft": (0.40, 0.40), "pause": (0.50, 0.52), "simcot": (0.54, 0.56), "atp_rl": (0.60, 0.64)}
    values["icot"] = (0.45, 0.49)
    values.update({"cot_sft": (0.70, 0.70), "cot_rl": (0.72, 0.74)})
    metrics = [metric(m, "test", v, seed=seed) for m, pair in values.items() for seed, v in enumerate(pair)]
    frame, _ = aggregate(metrics, methods)
    text = margins_markdown(frame, methods)
    assert "better control (Pause)" in text
    assert "| ATP (RL) | +11.0 ± 1.0 | +7.0 ± 1.0 |" in text and "| SIM-CoT | +4.0 ± 0.0 | - |" in text
    assert "| iCoT | -4.0 ± 1.0 | -8.0 ± 1.0 |" in text
    assert "CoT + RL" not in text and list(frame["method"][:2]) == ["cot_sft", "cot_rl"]  # CoT + RL right after CoT-SFT
    one_seed = aggregate([m for m in metrics if m["seed"] == 0], methods)[0]
    assert "one seed: no standard error" in margins_markdown(one_seed, methods)


def test_the_majority_vote_is_its_own_section_with_the_tokens_of_every_chain():
    from atp.stages.table import markdown

    methods = {"atp": {"stage": "latent_sft", "variant": "atp", "label": "ATP"}, "simcot": {"stage": "latent_sft"}}
    metrics = [
        {**metric("atp", "test", 0.5, runs=[0.5, 0.5]), "accuracy_vote": 0.6, "tokens_vote": 80.0, "vote": 8},
        {**metric("atp", "easy", 0.7, runs=[0.7, 0.7]), "accuracy_vote": 0.8, "tokens_vote": 80.0, "vote": 8},
        metric("simcot", "test", 0.5),
        metric("simcot", "easy", 0.7),
    ]
    frame, suites = aggregate(metrics, methods)
    text = markdown(frame, suites, "", methods)
    section = text.split("## Majority vote")[1].split("Training job config hashes")[0]
    assert "| ATP | 8 | 60.0 | 80.0 | 70.0 | 60.0 | 80.0 |" in section and "simcot" not in section
