"""Token-level GRPO on written CoT (atp.rl.tokens): the RL machinery's positive control, through the same code."""

from __future__ import annotations

import pytest
import torch

from atp import modeling
from atp.rewards import RewardConfig
from atp.rl import RLConfig, TokenPolicy, grpo_step, ppo_update, replay, rollout
from atp.runtime import seed_everything


def token_policy(tiny_data, questions=4, group=4):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    lm = modeling.build_model(cfg["model"], tok)
    prompts = [modeling.prompt_ids(tok, r["question"]) for r in splits["train"][:questions]]
    return TokenPolicy(lm, tok.eos_token_id, tok.pad_token_id).eval(), [p for p in prompts for _ in range(group)], tok


def test_token_replay_gives_the_rollout_log_probabilities_and_the_unpadded_ones(tiny_data):
    policy, prompts, tok = token_policy(tiny_data)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_cot_tokens=12, temperature=1.0)
    traj = rollout(policy, prompts, cfg, torch.Generator().manual_seed(0))
    assert traj.z is None and set(traj.masks) == {"answer"} and traj.latents_used.tolist() == [0] * 16
    taken = traj.masks["answer"]
    assert taken[:, 0].all() and taken.shape[1] <= 12
    for row, ids in enumerate(traj.answer_ids(policy.eos_id)):  # tokens stop at EOS; padding after it
        assert policy.eos_id not in ids and int(taken[row].sum()) in (len(ids), len(ids) + 1)
    new = replay(policy, traj, cfg)
    assert torch.allclose(new["answer"] * taken, traj.old["answer"], atol=1e-4)
    # The batched replay (left-padded prompts, right-padded completions) equals each row scored alone.
    for row in (0, 5, 15):
        n = int(taken[row].sum())
        ids = torch.tensor([prompts[row] + traj.answer[row, :n].tolist()])
        logits = policy.lm(input_ids=ids).logits[0, len(prompts[row]) - 1 : -1].float()
        alone = logits.log_softmax(-1).gather(-1, ids[0, len(prompts[row]) :, None]).squeeze(-1)
        assert torch.allclose(new["answer"][row, :n], alone, atol=1e-4)


def test_a_ppo_update_raises_the_rewarded_completions_and_lowers_the_others(tiny_data):
    """The machinery's sign: one pass of updates on hand-set advantages moves each trajectory's log-probability the
    way its advantage says (a wrong sign or a dropped gradient anywhere in loss, replay or update fails this)."""
    policy, prompts, _ = token_policy(tiny_data, questions=1, group=8)
    cfg = RLConfig(questions=1, group_size=8, minibatch_size=8, max_cot_tokens=8)
    traj = rollout(policy, prompts, cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        traj.old = replay(policy, traj, cfg)
    advantages = torch.tensor([1.0, -1.0] * 4)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    stats = ppo_update(policy, optimizer, trainable, traj, advantages, cfg, torch.Generator().manual_seed(0), 1.0)
    assert stats["first_clip_fraction"] == [0.0] and all(g > 0 for g in stats["grad_norm"])
    with torch.no_grad():
        after = replay(policy, traj, cfg)
    m = traj.masks["answer"].float()
    change = ((after["answer"] - traj.old["answer"]) * m).sum(-1) / m.sum(-1)
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all(), change


def test_a_token_grpo_step_reads_the_written_steps_and_updates_unless_frozen(tiny_data):
    _, splits, _ = tiny_data
    for frozen in (False, True):
        policy, prompts, tok = token_policy(tiny_data)
        trainable = [p for p in policy.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        cfg = RLConfig(questions=4, group_size=4, minibatch_size=8, max_cot_tokens=10, frozen=frozen)
        answers = [r["answer"] for r in splits["train"][:4] for _ in range(4)]
        # Coherence without the correctness gate, so that a random policy's groups differ in reward.
        rewards = RewardConfig(correct=1.0, format=0.5, coherence=1.0, coherence_times_correct=False)
        generator = torch.Generator().manual_seed(0)
        metrics, trajectories = grpo_step(
            policy, optimizer, trainable, prompts, answers, cfg, rewards, tok, generator, 1.0, diagnose=True
        )
        assert len(trajectories) == 16 and metrics["rl/latents"] == 0.0
        assert all(t["latent_steps"] == [] or t["latent_steps"][0].startswith("<<") for t in trajectories)
        assert "rl/grad_cosine/answer" in metrics and "rl/grad_cosine/latent" not in metrics
        moved = any(not torch.equal(p, b) for p, b in zip(trainable, before))
        assert moved != frozen and ("rl/loss" in metrics) != frozen


def test_written_steps_are_scored_by_the_coherence_reward():
    from atp.rewards import total
    from atp.text import extract_steps

    text = "<<2+3=5>>\n<<5*2=10>>\n### 10"
    rewards = total([text], ["10"], [extract_steps(text)], RewardConfig())
    assert rewards["coherence"] == [1.0] and rewards["total"] == [1.6]


def test_rl_may_start_from_cot_sft_but_not_from_a_nocot_model():
    from atp import config
    from atp.config import ConfigError

    methods = {
        "cot_sft": {"stage": "sft", "format": "cot"},
        "nocot_sft": {"stage": "sft", "format": "nocot"},
        "cot_rl": {"stage": "rl", "init": "cot_sft"},
    }
    config.check_pipeline(config.resolve({"methods": methods}))
    with pytest.raises(ConfigError, match=r"methods\.bad_rl\.init.*CoT sft method"):
        config.check_pipeline(config.resolve({"methods": {**methods, "bad_rl": {"stage": "rl", "init": "nocot_sft"}}}))


def test_the_rl_stage_trains_a_cot_model_and_saves_a_language_model(tiny_data, tmp_path):
    import json

    from atp import cli, config
    from atp.latent import is_latent
    from atp.stages import rl as rl_stage
    from conftest import stage_argv, write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    policy, _, _ = token_policy(tiny_data)
    modeling.save_model(policy.lm, tok, tmp_path / "cot", {"step": 0})
    job = config.resolve(
        {
            **{k: cfg[k] for k in ("data", "model")},
            "train": {**cfg["train"], "steps": 2, "log_every": 1, "val_samples": 5, "lr": 1e-3},
            "rl": {"questions": 2, "group_size": 4, "minibatch_size": 4, "max_cot_tokens": 8, "diagnostics_every": 1},
            "methods": {"cot_rl": {"stage": "rl"}},
        }
    )
    config.dump(job, tmp_path / "job.yaml")
    argv = stage_argv(tmp_path / "job.yaml", "cot_rl", data, tmp_path / "out", "--init", str(tmp_path / "cot"))
    cli.run(rl_stage.main, cli.training_parser("rl"), argv)
    out = tmp_path / "out"
    assert not is_latent(out / "model") and modeling.load_model(out / "model")[0] is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and "val/accuracy_sample" not in metrics
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and "rl/grad_norm/answer" in history[0]


def test_diversity_metrics_of_hand_built_groups():
    from atp.rl.grpo import diversity_metrics, valid_chain

    gold = ["<<2+3=5>>", "<<5*4=20>>", "<<20-1=19>>"]
    assert valid_chain(["<<3+2=5>>", "<<4*5=20>>"], gold)  # another order of the same sub-results
    assert not valid_chain(["<<2+3=6>>"], gold) and not valid_chain([], gold)  # false, or no chain at all
    a, b, wrong = ["<<2+3=5>>", "<<5*4=20>>"], ["<<3+2=5>>", "<<4*5=20>>"], ["<<2*3=6>>"]
    group1 = [(a, "### 19"), (a, "### 19"), (b, "### 19"), (wrong, "### 6")]
    group2 = [(a, "### 19")] * 4
    trajectories = [
        {"latent_steps": s, "completion": c, "valid_chain": valid_chain(s, gold), "noise_over_mu": 0.1 * i}
        for i, (s, c) in enumerate(group1 + group2)
    ]
    out = diversity_metrics(trajectories, 4)
    assert out["rl/distinct_chains"] == (3 + 1) / 2
    assert out["rl/distinct_answers"] == (2 + 1) / 2
    assert out["rl/distinct_valid_chains"] == (2 + 1) / 2
    assert abs(out["rl/noise_over_mu"] - 0.35) < 1e-9
    bare = diversity_metrics([{"latent_steps": [], "completion": "### 1"}] * 4, 2)
    assert set(bare) == {"rl/distinct_chains", "rl/distinct_answers"}
    # A policy that decodes no chains (CoLaR: no step decoder) reports none, rather than one empty chain per group.
    chainless = diversity_metrics([{"latent_steps": None, "completion": "### 1"}] * 4, 2)
    assert set(chainless) == {"rl/distinct_answers"}


def test_pass_at_k_of_a_language_model_and_of_a_latent_policy(tiny_data):
    from atp.evaluate import pass_at_k
    from atp.latent import LatentConfig, LatentReasoner

    cfg, splits, tok = tiny_data
    policy, _, _ = token_policy(tiny_data)
    records = splits["val"][:6]
    seed_everything(0)
    latent = LatentReasoner(modeling.build_model(cfg["model"], tok), LatentConfig(variant="atp", c=2, max_steps=2), tok).eval()
    for model in (policy.lm, latent):
        out = pass_at_k(model, tok, records, 3, 0, "cpu")
        assert set(out) == {"pass_at_1", "pass_at_3", "vote_at_3", "uniform_groups", "distinct_answers"}
        assert 0 <= out["pass_at_1"] <= out["pass_at_3"] <= 1 and 0 <= out["uniform_groups"] <= 1
        assert 1 <= out["distinct_answers"] <= 3
        assert out == pass_at_k(model, tok, records, 3, 0, "cpu")  # seeded: the same samples again
    with pytest.raises(ValueError, match="deterministic"):
        deterministic = LatentReasoner(modeling.build_model(cfg["model"], tok), LatentConfig(variant="simcot"), tok)
        pass_at_k(deterministic, tok, records, 2, 0, "cpu")
