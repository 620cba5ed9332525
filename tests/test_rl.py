"""GRPO over latent trajectories: advantages, rollout/replay agreement, the PPO-clip update, the stage."""

from __future__ import annotations

import json

import pytest
import torch

from atp import modeling
from atp.latent import LatentConfig, LatentReasoner
from atp.rewards import RewardConfig
from atp.rl import RLConfig, group_advantages, ppo_clip_loss, replay, rollout
from atp.runtime import seed_everything

TINY_DECODER = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def policy(tiny_data, variant="atp", c=2, max_steps=3, **latent):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = LatentReasoner(
        modeling.build_model(cfg["model"], tok),
        LatentConfig(variant=variant, c=c, max_steps=max_steps, decoder=TINY_DECODER, **latent),
        tok,
    )
    prompts = [modeling.prompt_ids(tok, r["question"]) for r in splits["train"][:4]]
    return model.eval(), [p for p in prompts for _ in range(4)], tok


def test_advantages_of_a_hand_built_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()  # unbiased, as TRL
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-8))
    assert torch.equal(adv[4:], torch.zeros(4))  # all equal: zero advantage, no division by zero
    assert torch.isfinite(adv).all()
    # Rewards that float32 cannot hold exactly: a uniform group still gets exactly 0 (the mean of eight float32 1.6s is
    # a rounding step off 1.6, which divided by the 1e-8 guard once gave each row -12), a mixed one sums to 0.
    uniform = group_advantages(torch.tensor([1.6] * 8 + [1.6] * 7 + [0.5]), 8)
    assert torch.equal(uniform[:8], torch.zeros(8)) and abs(float(uniform[8:].sum())) < 1e-5
    # ... and that group contributes no gradient to the PPO loss.
    new = {"answer": torch.randn(4, 3, requires_grad=True)}
    cfg = RLConfig(questions=1, group_size=4, minibatch_size=4)
    loss, _, _ = ppo_clip_loss(new, {"answer": torch.zeros(4, 3)}, {"answer": torch.ones(4, 3, dtype=torch.bool)}, adv[4:], cfg)
    loss.backward()
    assert torch.equal(new["answer"].grad, torch.zeros(4, 3))


def test_group_size_one_and_a_minibatch_that_does_not_divide_are_refused():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(group_size=1)
    with pytest.raises(ValueError, match="minibatch_size"):
        RLConfig(questions=3, group_size=2, minibatch_size=4)


@pytest.mark.parametrize("variant", ["atp", "atp_no_stop"])
def test_replay_gives_the_rollout_log_probabilities_before_any_update(tiny_data, variant):
    model, prompts, _ = policy(tiny_data, variant)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6)
    traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(0))
    new = replay(model, traj, cfg)
    assert set(new) == set(traj.old) == ({"latent", "stop", "answer"} if variant == "atp" else {"latent", "answer"})
    for key in new:
        m = traj.masks[key]
        assert torch.allclose(new[key][m], traj.old[key][m], atol=1e-3), key
    used = traj.latents_used
    assert ((used % 2) == 0).all() and (used <= 6).all()
    assert torch.equal(traj.masks["latent"].sum(-1), torch.clamp(used + (traj.stop_labels.sum(-1)), max=6))
    if variant == "atp":  # one stop decision per boundary reached, the last one the stop itself
        assert torch.equal(traj.masks["stop"].sum(-1), used // 2 + traj.stop_labels.sum(-1))


def colar_policy(tiny_data, eot_scale: float = 20.0):
    """An untrained CoLaR policy whose LM head says <eot> often enough (its <eot> row scaled up) that rows stop
    after 1..5 latents; the seed-0 rollout below has both kinds of row."""
    model, prompts, tok = policy(tiny_data, "colar", c=1, max_steps=5, head="mlp")
    with torch.no_grad():
        model.backbone.get_output_embeddings().weight[model.eot_id] *= eot_scale
    return model, prompts, tok


def test_colar_rollouts_score_each_latent_by_its_mean_log_density_and_each_eot_decision(tiny_data):
    """CoLaR's policy: a row that ran k latents made k stop decisions (the LM head's <eot> or not after each), the
    last one <eot>; a row that ran the whole budget (5) made 4, none <eot>. Replay gives the rollout's
    log-probabilities back, also for rows whose <eot> came at the last slot the loop ran (the loop stops there,
    so the rollout's slots end with it)."""
    model, prompts, _ = colar_policy(tiny_data)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6, latent_logp="mean")
    traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(0))
    used = traj.latents_used
    assert set(traj.old) == {"latent", "stop", "answer"}
    stopped = used < 5
    assert stopped.any() and (~stopped).any() and (used >= 1).all()
    assert torch.equal(traj.masks["latent"].sum(-1), used)
    assert torch.equal(traj.stop_labels.sum(-1), stopped.long())
    assert torch.equal(traj.masks["stop"].sum(-1), used.clamp(max=4))
    for b in torch.nonzero(stopped).flatten().tolist():  # the <eot> is the row's last decision, after its last latent
        assert traj.stop_labels[b, used[b] - 1] == 1 and traj.masks["stop"][b, used[b] - 1]
    new = replay(model, traj, cfg)
    for key in new:
        m = traj.masks[key]
        assert torch.allclose(new[key][m], traj.old[key][m], atol=1e-4), key
    # The stop log-probabilities are log p(<eot>) and log(1 - p(<eot>)) of the LM head: never above 0.
    assert (traj.old["stop"][traj.masks["stop"]] <= 0).all()
    # CoLaR's latent log-density: the mean over dimensions, the sum's 1/d
    sums = replay(model, traj, RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6))
    m = traj.masks["latent"]
    d = model.core.config.hidden_size
    assert torch.allclose(sums["latent"][m], new["latent"][m] * d, atol=1e-3)


def test_a_colar_grpo_step_runs_from_a_ratio_of_one_and_its_update_moves_the_latent_head_and_backbone(tiny_data):
    from atp.rl import grpo_step

    model, prompts, tok = colar_policy(tiny_data)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)  # a weight moves only by its gradient
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=8, max_answer_tokens=6, latent_logp="mean")
    metrics, trajectories = grpo_step(
        model,
        optimizer,
        trainable,
        prompts,
        ["1"] * 16,
        cfg,
        RewardConfig(coherence=0.0),
        tok,
        torch.Generator().manual_seed(0),
        1.0,
    )
    # No step decoder: no chains to count (the report shows '-' rather than 1 chain and 0 valid ones per group).
    assert len(trajectories) == 16 and all(t["latent_steps"] is None for t in trajectories)
    assert "rl/distinct_chains" not in metrics and "rl/distinct_answers" in metrics
    assert metrics["rl/first_clip_fraction"] == 0.0 and metrics["rl/first_max_abs_log_ratio"] < 1e-5
    # The untrained policy's rewards are all 0: an update with advantages given by hand
    traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(1))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0] * 4), 4)
    loss, _, _ = ppo_clip_loss(replay(model, traj, cfg), traj.old, traj.masks, advantages, cfg)
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("mu_head") for k in changed)


def test_latent_temperature_widens_the_draws_and_replay_scores_them_under_the_tempered_gaussian(tiny_data):
    """z ~ N(mu, (T sigma)^2): the draws' spread around mu grows T-fold, and replay at the same T gives
    the rollout's log-densities back (at T = 1 it would not: those are other densities)."""
    model, prompts, _ = policy(tiny_data, "atp_no_stop")  # a fixed budget: every slot runs, at either T
    spreads, trajs = {}, {}
    for T in (1.0, 4.0):
        cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=4, latent_temperature=T)
        traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(0))
        prefix, mask = model.prefix(traj.prompts)
        run = model.run_prefix_and_slots(prefix, mask, traj.state, mode="sample", forced_z=traj.z, latent_temperature=T)
        spreads[T] = ((traj.z - run.mu) * torch.exp(-0.5 * run.logvar)).std().item()  # standardised by T sigma: ~1
        own = model.run_prefix_and_slots(prefix, mask, traj.state, mode="sample", forced_z=traj.z)  # the head's sigma
        assert ((traj.z - own.mu) * torch.exp(-0.5 * own.logvar)).std().item() == pytest.approx(T, rel=0.1)
        new = replay(model, traj, cfg)
        m = traj.masks["latent"]
        assert torch.allclose(new["latent"][m], traj.old["latent"][m], atol=1e-3)
        trajs[T] = (traj, cfg)
    assert spreads[1.0] == pytest.approx(1.0, abs=0.1) and spreads[4.0] == pytest.approx(1.0, abs=0.1)
    traj, cfg = trajs[4.0]
    untempered = replay(model, traj, RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=4))
    m = traj.masks["latent"]
    assert not torch.allclose(untempered["latent"][m], traj.old["latent"][m], atol=1e-1)
    with pytest.raises(ValueError, match="latent_temperature"):
        RLConfig(latent_temperature=0.0)


def test_ppo_clip_loss_pooled_over_actions_at_ratio_one_is_minus_the_mean_advantage_and_clips_large_ratios():
    cfg = RLConfig(questions=1, group_size=2, minibatch_size=2, loss="action")
    old = {"answer": torch.zeros(2, 3)}
    masks = {"answer": torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)}
    adv = torch.tensor([1.0, -1.0])
    loss, stats, _ = ppo_clip_loss({"answer": torch.zeros(2, 3)}, old, masks, adv, cfg)
    assert loss.item() == pytest.approx(-(1 + 1 - 1) / 3)
    assert stats["clip_fraction"] == 0.0 and stats["max_abs_log_ratio"] == 0.0
    # log-ratio 10 is clamped to 3; the positive-advantage row is clipped at 1 + eps
    loss, stats, _ = ppo_clip_loss({"answer": torch.full((2, 3), 10.0)}, old, masks, adv, cfg)
    assert loss.item() == pytest.approx(-(1.2 * 2 - torch.exp(torch.tensor(3.0)).item()) / 3, rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(2 / 3) and stats["max_abs_log_ratio"] == 10.0


def test_the_papers_loss_shape_takes_per_trajectory_means_of_the_latent_and_answer_terms_and_sums_them():
    """Hand-built: row 0 has 2 latents, 1 stop decision and 3 answer tokens; row 1 has 1 latent, 1 stop, 1 token.

    At ratio 1 every action's objective is -advantage, so both of a row's means are -adv and the loss is the
    mean over rows of -2 adv = -(2 * 1 + 2 * (-0.5)) / 2 = -0.5. Pooled over the 9 actions it is -0.5 too
    (-(6 - 1.5) / 9); a latent weight tells the two shapes apart.
    """
    masks = {
        "latent": torch.tensor([[1, 1], [1, 0]], dtype=torch.bool),
        "stop": torch.tensor([[1, 0], [1, 0]], dtype=torch.bool),
        "answer": torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool),
    }
    zeros = {k: torch.zeros(m.shape) for k, m in masks.items()}
    adv = torch.tensor([1.0, -0.5])
    cfg = RLConfig(questions=1, group_size=2, minibatch_size=2)
    loss, _, parts = ppo_clip_loss(zeros, zeros, masks, adv, cfg)
    assert loss.item() == pytest.approx(-0.5)
    assert sum(parts.values()).item() == pytest.approx(loss.item())
    # latent weight 0.5: row 0's latent term is (2 * 0.5 * -1 + 1 * -1) / 3 = -2/3, row 1's (0.5 * 0.5 + 0.5) / 2 = 0.375
    weighted, _, parts = ppo_clip_loss(
        zeros, zeros, masks, adv, RLConfig(questions=1, group_size=2, minibatch_size=2, latent_weight=0.5)
    )
    assert weighted.item() == pytest.approx((-2 / 3 - 1 + 0.375 + 0.5) / 2)
    assert parts["latent"].item() == pytest.approx((2 * 0.5 * -1 / 3 + 0.5 * 0.5 / 2) / 2)
    # pooled over actions with the same weight: (2*0.5*-1 + -1 + 3*-1 + 0.5*0.5 + 0.5 + 0.5) / 9
    pooled, _, _ = ppo_clip_loss(
        zeros, zeros, masks, adv, RLConfig(questions=1, group_size=2, minibatch_size=2, latent_weight=0.5, loss="action")
    )
    assert pooled.item() == pytest.approx((-1 - 1 - 3 + 0.25 + 0.5 + 0.5) / 9)
    # answer weight 0: only the latent and stop term is left, and the answer tokens get no gradient
    latents_only, _, parts = ppo_clip_loss(
        zeros, zeros, masks, adv, RLConfig(questions=1, group_size=2, minibatch_size=2, answer_weight=0.0)
    )
    assert parts["answer"].item() == 0.0
    assert latents_only.item() == pytest.approx((-1 + 0.5) / 2)
    with pytest.raises(ValueError, match="answer_weight"):
        RLConfig(answer_weight=-1.0)
    # with N processes the normaliser is the global minibatch: this process's two rows of four
    half, _, _ = ppo_clip_loss(zeros, zeros, masks, adv, cfg, rows=4)
    assert half.item() == pytest.approx(loss.item() / 2)


def test_a_latents_log_density_can_be_averaged_over_dimensions():
    from atp.rl import gaussian_logp

    z, mu, logvar = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    assert torch.allclose(gaussian_logp(z, mu, logvar, "mean") * 5, gaussian_logp(z, mu, logvar, "sum"), atol=1e-5)
    with pytest.raises(ValueError, match="latent_logp"):
        RLConfig(latent_logp="max")
    with pytest.raises(ValueError, match="loss"):
        RLConfig(loss="token")


@pytest.mark.parametrize("latent_logp", ["sum", "mean"])
def test_gradient_diagnostics_measure_each_action_type_and_change_nothing(tiny_data, latent_logp):
    from atp.rl import gradient_diagnostics

    model, prompts, _ = policy(tiny_data)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6, latent_logp=latent_logp)
    traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0] * 2), 4)
    out = gradient_diagnostics(model, trainable, traj, advantages, cfg)
    assert set(out) == {f"rl/grad_{m}/{k}" for m in ("norm", "cosine") for k in ("latent", "stop", "answer", "all")}
    assert all(-1.0 - 1e-6 <= out[f"rl/grad_cosine/{k}"] <= 1.0 + 1e-6 for k in ("latent", "stop", "answer", "all"))
    assert out["rl/grad_norm/latent"] > 0 and out["rl/grad_norm/answer"] > 0
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(trainable, before))
    # a summed log-density over d dimensions weighs more than its mean: the diagnostics see it
    if latent_logp == "sum":
        mean_cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6, latent_logp="mean")
        mean_traj = rollout(model, prompts, mean_cfg, torch.Generator().manual_seed(1))
        mean_out = gradient_diagnostics(model, trainable, mean_traj, advantages, mean_cfg)
        assert out["rl/grad_norm/latent"] > 5 * mean_out["rl/grad_norm/latent"]
    # one group has no second half to compare with
    assert gradient_diagnostics(model, trainable, traj.rows(list(range(4))), advantages[:4], cfg) == {}


def test_a_grpo_update_changes_the_policy_and_leaves_the_decoder_frozen(tiny_data):
    from atp.rl import freeze_decoder

    model, prompts, _ = policy(tiny_data)
    freeze_decoder(model)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6)
    traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(1))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0] * 4), 4)
    loss, _, _ = ppo_clip_loss(replay(model, traj, cfg), traj.old, traj.masks, advantages, cfg)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("backbone.") for k in changed)
    assert any(k.startswith("mu_head") for k in changed) and any(k.startswith("stop_head") for k in changed)
    assert not any(k.startswith(("decoder.", "decoder_proj.")) for k in changed)


def test_a_grpo_step_runs_end_to_end_with_lora_and_a_kl_penalty(tiny_data):
    from atp.modeling import apply_lora
    from atp.rl import freeze_decoder, grpo_step, reference_policy

    model, prompts, tok = policy(tiny_data)
    model.backbone = apply_lora(
        model.backbone, {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    )
    freeze_decoder(model)
    keys = list(model.state_dict())
    ref = reference_policy(model)
    # The reference leaves out the step decoder (replay never runs it) and leaves the policy as it was.
    assert ref.decoder is None and model.decoder is not None and list(model.state_dict()) == keys
    assert not any(p.requires_grad for p in ref.parameters())
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=8, max_answer_tokens=6, kl_coef=0.1)
    # Coherence only, ungated: an untrained policy already varies in it (rows that stop at once score 1).
    rewards = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and n.startswith("backbone."))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    answers = ["1"] * len(prompts)
    metrics, trajectories = grpo_step(
        model, optimizer, trainable, prompts, answers, cfg, rewards, tok, torch.Generator().manual_seed(0), 1.0, ref
    )
    assert len(trajectories) == 16 and all("latent_steps" in t for t in trajectories)
    for key in (
        "rewards/total/mean",
        "rewards/coherence/mean",
        "rewards/total/group_std",
        "rl/accuracy",
        "rl/latents",
        "rl/clip_fraction",
        "rl/loss",
        "rl/kl",
    ):
        assert key in metrics and metrics[key] == metrics[key], key
    assert metrics["rewards/total/group_std"] > 0
    # Before the first update the replay reproduces the rollout: nothing is clipped on the first minibatch, and the
    # log-ratios are 0 up to float32 rounding (the replay's full forward pass sums in another order than the rollout's
    # cached one: one CI run measured 1.19e-07); a wrong token or position gives ratios of order 0.1 or more.
    assert metrics["rl/first_clip_fraction"] == 0.0 and metrics["rl/first_max_abs_log_ratio"] < 1e-5


def test_a_frozen_rl_step_rolls_out_and_scores_but_changes_no_weight(tiny_data):
    """The frozen-policy control: the same rollouts and rewards as a training step, no update."""
    from atp.rl import freeze_decoder, grpo_step

    model, prompts, tok = policy(tiny_data)
    freeze_decoder(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=8, max_answer_tokens=6, frozen=True)
    rewards = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    metrics, trajectories = grpo_step(
        model, optimizer, trainable, prompts, ["1"] * 16, cfg, rewards, tok, torch.Generator().manual_seed(0), 1.0, diagnose=True
    )
    assert len(trajectories) == 16 and "rewards/total/mean" in metrics and "rl/loss" not in metrics
    assert "rl/grad_cosine/all" in metrics  # the diagnostics still measure the gradient it would have followed
    assert all(torch.equal(p, b) for p, b in zip(trainable, before))


def test_dynamic_sampling_updates_on_the_groups_whose_rewards_differ(tiny_data):
    """rl.oversample 2: 4 questions' groups rolled out, the update uses 2 of them, informative ones first; the metrics
    describe all 16 rollouts."""
    from atp.rl import freeze_decoder, grpo_step
    from atp.rl.grpo import kept_rows

    # Informative groups first, in rollout order; uniform ones fill what is left.
    assert kept_rows([0, 0, 1, 0, 1, 1, 0, 1], 2, 2) == [2, 3, 6, 7]
    assert kept_rows([0, 0, 1, 0, 1, 1, 1, 1], 2, 2) == [0, 1, 2, 3]
    assert kept_rows([0, 0, 1, 0, 1, 1, 1, 1], 2, 4) == list(range(8))
    model, prompts, tok = policy(tiny_data)
    freeze_decoder(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    cfg = RLConfig(questions=2, group_size=4, minibatch_size=8, max_answer_tokens=6, oversample=2)
    rewards = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    metrics, trajectories = grpo_step(
        model, optimizer, trainable, prompts, ["1"] * 16, cfg, rewards, tok, torch.Generator().manual_seed(0), 1.0
    )
    assert len(trajectories) == 16
    informative = 1 - metrics["rl/zero_advantage_groups"]  # over the 4 groups rolled out
    assert metrics["rl/informative_groups"] == min(1.0, informative * 4 / 2)
    assert metrics["rl/first_clip_fraction"] == 0.0  # the old log-probabilities are those of the kept rows
    assert len(optimizer.state) > 0  # one update of the 8 kept rows


def test_the_rl_stage_resumes_from_its_checkpoint_to_the_same_policy(tiny_data, tmp_path, monkeypatch):
    """Run 4 RL steps; crash another run in its third step and rerun it: same weights, metrics and history."""
    import shutil

    from safetensors.torch import load_file

    from atp import cli, config
    from atp.latent import save_latent
    from atp.stages import rl as rl_stage
    from conftest import write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    model, _, _ = policy(tiny_data)
    save_latent(model, tok, tmp_path / "atp", {"step": 0})
    job = config.resolve(
        {
            **{k: cfg[k] for k in ("data", "model")},
            "train": {**cfg["train"], "steps": 4, "checkpoint_every": 2, "log_every": 3, "val_samples": 0, "lr": 1e-3},
            "rl": {"questions": 2, "group_size": 4, "minibatch_size": 4, "max_answer_tokens": 4, "trajectories_every": 2},
            "methods": {"atp_rl": {"stage": "rl"}},
        }
    )
    config.dump(job, tmp_path / "job.yaml")
    argv = [
        "--config",
        str(tmp_path / "job.yaml"),
        "--method",
        "atp_rl",
        "--data-dir",
        str(data),
        "--init",
        str(tmp_path / "atp"),
        "--no-tracking",
    ]
    parser = cli.training_parser("rl")
    cli.run(rl_stage.main, parser, argv + ["--out-dir", str(tmp_path / "a"), "--checkpoint-dir", str(tmp_path / "ck_a")])
    assert not (tmp_path / "ck_a").exists()  # a finished run leaves no checkpoint to resume from

    import atp.rl.grpo

    real_step, calls = atp.rl.grpo.grpo_step, []

    def crash_in_step_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(atp.rl.grpo, "grpo_step", crash_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        cli.run(rl_stage.main, parser, argv + ["--out-dir", str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "ck_b")])
    monkeypatch.setattr(atp.rl.grpo, "grpo_step", real_step)
    (tmp_path / "b" / "history.jsonl").unlink()  # Snakemake deletes an interrupted job's outputs
    cli.run(rl_stage.main, parser, argv + ["--out-dir", str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "ck_b")])
    for weights in ("latent_heads.safetensors", "model.safetensors"):  # the heads, then the backbone
        a, b = (load_file(tmp_path / d / "model" / weights) for d in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    for name in ("metrics.json", "history.jsonl"):  # the last log window (steps 2-4) spans the restart
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    history = [json.loads(line)["step"] for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3, 4]
    shutil.rmtree(tmp_path / "ck_b", ignore_errors=True)


def test_processes_must_share_the_questions_and_the_minibatch_evenly():
    from atp.config import ConfigError
    from atp.rl import check_world
    from atp.train import step_generator

    check_world(RLConfig(questions=4, group_size=2, minibatch_size=4), 2)
    with pytest.raises(ConfigError, match=r"'rl\.questions'.*3 questions per RL step do not divide among 2 processes"):
        check_world(RLConfig(questions=3, group_size=2, minibatch_size=2), 2)
    with pytest.raises(ConfigError, match=r"'rl\.minibatch_size'"):
        check_world(RLConfig(questions=4, group_size=3, minibatch_size=3), 2)
    # Rank 0 keeps the one-process draws; other ranks draw differently, and the same again for the same (seed, step, rank).
    draw = lambda seed, step, rank: torch.rand(4, generator=step_generator(seed, step, rank, "cpu"))  # noqa: E731
    assert torch.equal(draw(1, 5, 0), torch.rand(4, generator=torch.Generator().manual_seed(1 * 1_000_003 + 5)))
    assert not torch.equal(draw(1, 5, 0), draw(1, 5, 1)) and torch.equal(draw(1, 5, 1), draw(1, 5, 1))
