"""bf16 autocast outside the SFT loop: RL rollouts and updates (`train.bf16`), evaluation (`eval.bf16`). On CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from atp import modeling
from atp.latent import LatentConfig, LatentReasoner, save_latent
from atp.rewards import RewardConfig
from atp.rl import RLConfig
from atp.runtime import seed_everything

TINY_DECODER = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def tiny_policy(tiny_data):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = LatentReasoner(
        modeling.build_model(cfg["model"], tok), LatentConfig(variant="atp", c=2, max_steps=3, decoder=TINY_DECODER), tok
    )
    return model, splits, tok


def test_a_grpo_step_under_bf16_is_finite_and_differs_from_fp32(tiny_data):
    import copy

    from atp.rl import freeze_decoder, grpo_step

    model, splits, tok = tiny_policy(tiny_data)
    prompts = [modeling.prompt_ids(tok, r["question"]) for r in splits["train"][:2] for _ in range(4)]
    cfg = RLConfig(questions=2, group_size=4, minibatch_size=4, max_answer_tokens=4)
    rewards = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    out = {}
    for bf16 in (False, True):
        policy = freeze_decoder(copy.deepcopy(model))
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        metrics, _ = grpo_step(
            policy, optimizer, trainable, prompts, ["1"] * 8, cfg, rewards, tok, torch.Generator().manual_seed(0), 1.0, bf16=bf16
        )
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert all(torch.isfinite(p).all() for p in policy.parameters())
        assert all(p.dtype == torch.float32 for p in policy.parameters())  # autocast: the weights stay fp32
        out[bf16] = metrics
    # Autocast was on: bf16 matmuls change the replayed log-probabilities, hence the loss.
    assert out[True]["rl/loss"] != out[False]["rl/loss"]
    # Before the first update, rollout and replay agree exactly, under bf16 as in fp32: log-ratio 0, nothing clipped.
    assert all(m["rl/first_clip_fraction"] == 0.0 and m["rl/first_max_abs_log_ratio"] == 0.0 for m in out.values())


@pytest.mark.parametrize("head", ["mlp", "residual"])
def test_with_a_trained_size_sigma_the_first_bf16_log_ratio_is_zero_and_nothing_is_clipped(tiny_data, head):
    """A trained head's sigma is small (logvar near -8, sigma 0.018): a bf16 rounding of mu between the rollout and a
    replay over another batch composition would then move the Gaussian log-density by many nats and clip actions that
    should not be. The head and the log-density run in fp32 under autocast, so the first minibatch's log-ratio is 0."""
    from atp.rl import bf16_first_step

    cfg, splits, tok = tiny_data
    seed_everything(0)
    latent = LatentConfig(variant="atp", c=2, max_steps=3, decoder=TINY_DECODER, head=head)
    model = LatentReasoner(modeling.build_model(cfg["model"], tok), latent, tok)
    metrics = bf16_first_step(model, tok, [r["question"] for r in splits["train"]], "cpu")
    assert metrics["rl/first_clip_fraction"] == 0.0
    assert metrics["rl/first_max_abs_log_ratio"] < 1e-4, metrics["rl/first_max_abs_log_ratio"]


@pytest.mark.slow
def test_the_rl_stage_and_evaluation_run_under_bf16(tiny_data, tmp_path, monkeypatch):
    """The RL stage with train.bf16 and the evaluation stage with eval.bf16 (a latent and a language model): finite results."""
    from atp import cli, config
    from atp.stages import evaluate, rl
    from conftest import tiny_config, write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    model, _, _ = tiny_policy(tiny_data)
    save_latent(model, tok, tmp_path / "atp", {"step": 0})
    modeling.save_model(modeling.build_model(cfg["model"], tok), tok, tmp_path / "lm", {"step": 0})
    job = tmp_path / "job.yaml"
    config.dump(
        tiny_config(
            train={"steps": 2, "checkpoint_every": 10, "val_samples": 4, "bf16": True},
            rl={"questions": 2, "group_size": 2, "minibatch_size": 2, "max_answer_tokens": 4},
            eval={"bf16": True, "limit": 8, "samples": 1, "max_new_tokens": 12},
            methods={"atp_rl": {"stage": "rl"}, "cot_sft": {"stage": "sft", "format": "cot"}},
        ),
        job,
    )
    autocast_seen = []
    original = LatentReasoner.decode_answer

    def spy(self, *args, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LatentReasoner, "decode_answer", spy)
    out = tmp_path / "rl"
    cli.run(
        rl.main,
        cli.training_parser("rl"),
        [
            "--config",
            str(job),
            "--method",
            "atp_rl",
            "--data-dir",
            str(data),
            "--out-dir",
            str(out),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--init",
            str(tmp_path / "atp"),
            "--no-tracking",
        ],
    )
    assert autocast_seen[:2] == [True, True]  # the two rollouts (validation at the end decodes in fp32)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(math.isfinite(v) for h in history for v in h.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values())
    for method, model_dir in (("atp_rl", out / "model"), ("cot_sft", tmp_path / "lm")):
        autocast_seen.clear()
        ev = tmp_path / f"eval-{method}"
        argv = [
            "--config",
            str(job),
            "--method",
            method,
            "--model",
            str(model_dir),
            "--data-dir",
            str(data),
            "--suites",
            "val",
            "--out-dir",
            str(ev),
            "--no-tracking",
        ]
        p = cli.parser("evaluate")
        for name in ("--method", "--model", "--data-dir", "--out-dir"):
            p.add_argument(name, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--suites", nargs="+", required=True)
        cli.run(evaluate.main, p, argv)
        result = json.loads((ev / "val" / "metrics.json").read_text())
        assert result["n"] == 8 and 0.0 <= result["accuracy"] <= 1.0 and math.isfinite(result["tokens"]), result
        if method == "atp_rl":
            assert autocast_seen and all(autocast_seen)
