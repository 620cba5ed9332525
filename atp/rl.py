"""GRPO over latent trajectories (method.md section 6).

A trajectory is everything the policy sampled for one question: the Gaussian
latents z of the slots it reached, its stop decisions at step boundaries and its
answer tokens (temperature `temperature`, EOS included). Its log-probability is
the sum of the Gaussian log-densities of the z (summed over dimensions, or
averaged with `latent_logp: mean` as CoLaR does), the stop-decision
log-probabilities and the answer-token log-probabilities. Each of these is one
*action* of the PPO-clip loss: the log-ratio of every action is clamped to
[-clamp, clamp] before `exp`. The loss has the paper's shape (`loss: sequence`):
per trajectory, a masked mean over its latent and stop actions (the latents
weighted by `latent_weight`) plus a masked mean over its answer tokens, averaged
over the minibatch's trajectories; `loss: action` pools every action of the
minibatch into one masked mean instead.

The latent score-function term can drown the answer tokens' (a log-density summed
over d dimensions has a gradient 12-600x the answer's on the miniature), so every
`diagnostics_every` steps `gradient_diagnostics` logs the gradient norm of each
action type and the cosine between the policy gradients of two halves of the
step's groups: a cosine near 0 says the update is noise at this many trajectories.

`rollout` samples trajectories (no gradient) and records their log-probabilities
under the sampling weights; `replay` recomputes them, with gradient, under the
current weights by feeding the same z and the same stop decisions through the
same cached loop, so that before the first update the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from atp.latent import ACTIVE, MASKED, LatentReasoner, SlotRun, answer_ids, step_boundaries
from atp.train import apply_gradients

if TYPE_CHECKING:
    from atp.rewards import RewardConfig

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class RLConfig:
    """Settings of the RL stage (the `rl` config section; optimiser settings come from `train`)."""

    questions: int = 8  # questions per RL step (the paper: 16)
    group_size: int = 8  # G trajectories per question (the paper: 8)
    minibatch_size: int = 16  # trajectories per optimizer step; one pass over the rollouts (the paper: 16)
    epochs: int = 1  # passes over one step's rollouts
    clip_eps: float = 0.2
    log_ratio_clamp: float = 3.0
    kl_coef: float = 0.0  # KL to the frozen starting policy (k3 estimator per action); 0 = off, as the paper
    temperature: float = 1.0
    max_answer_tokens: int = 16
    trajectories_every: int = 25  # RL steps between trajectory artifacts
    trajectories_logged: int = 16  # trajectories written each time
    # sequence: per-trajectory means of the latent and answer terms, summed (the paper) | action: one mean over all actions
    loss: str = "sequence"
    latent_logp: str = "sum"  # sum: a latent's Gaussian log-density summed over dimensions (the paper) | mean: averaged (CoLaR)
    latent_weight: float = 1.0  # weight of the latent actions in the loss (stop decisions and answer tokens keep 1)
    frozen: bool = (
        False  # roll out and score on the same schedule without updating: the control the reward curves are read against
    )
    diagnostics_every: int = 10  # RL steps between gradient diagnostics (per-action-type norms, two-half cosine); 0 = off
    rewards: dict | None = None  # RewardConfig fields

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be at least 2 (a group-normalised advantage needs two rollouts), got {self.group_size}"
            )
        if self.questions < 1 or self.minibatch_size < 1 or self.epochs < 1:
            raise ValueError("questions, minibatch_size and epochs must be at least 1")
        if (self.questions * self.group_size) % self.minibatch_size:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} does not divide questions x group_size = "
                f"{self.questions * self.group_size}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.loss not in ("sequence", "action"):
            raise ValueError(f"loss must be 'sequence' or 'action', not {self.loss!r}")
        if self.latent_logp not in ("sum", "mean"):
            raise ValueError(f"latent_logp must be 'sum' or 'mean', not {self.latent_logp!r}")
        if self.latent_weight < 0:
            raise ValueError(f"latent_weight must be >= 0, got {self.latent_weight}")

    @property
    def rollouts(self) -> int:
        return self.questions * self.group_size

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.rollouts // self.minibatch_size


@dataclass
class Trajectories:
    """Sampled trajectories of R rows (one row per rollout) and their log-probabilities when sampled."""

    prompts: list[list[int]]
    state: torch.Tensor  # (R, N) ACTIVE / MASKED slots, as the rollout left them
    z: torch.Tensor  # (R, N, d) the latents drawn
    feeds: torch.Tensor  # (R, N, d) the vectors fed back (for the step decoder)
    answer: torch.Tensor  # (R, T) answer tokens, EOS included, padded
    masks: dict[str, torch.Tensor]  # latent (R, N), stop (R, N), answer (R, T): which actions count
    stop_labels: torch.Tensor  # (R, N) 1 where the row stopped
    old: dict[str, torch.Tensor]  # log-probabilities under the sampling weights, keyed like masks

    def rows(self, index: list[int]) -> Trajectories:
        idx = torch.tensor(index, dtype=torch.long)
        pick = lambda t: t[idx.to(t.device)]  # noqa: E731
        return Trajectories(
            prompts=[self.prompts[i] for i in index],
            state=pick(self.state),
            z=pick(self.z),
            feeds=pick(self.feeds),
            answer=pick(self.answer),
            masks={k: pick(v) for k, v in self.masks.items()},
            stop_labels=pick(self.stop_labels),
            old={k: pick(v) for k, v in self.old.items()},
        )

    @property
    def latents_used(self) -> torch.Tensor:
        return (self.state == ACTIVE).sum(-1)

    def answer_ids(self, eos_id: int) -> list[list[int]]:
        """Each row's answer tokens before EOS."""
        return answer_ids(self.answer, self.masks["answer"], eos_id)


def gaussian_logp(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed (or averaged: `reduce="mean"`) over the last dimension, in float32
    (also under bf16 autocast)."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    per_dim = -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)
    return per_dim.mean(-1) if reduce == "mean" else per_dim.sum(-1)


def _slot_logps(
    model: LatentReasoner, run: SlotRun, state: torch.Tensor, latent_logp: str = "sum"
) -> tuple[dict, dict, torch.Tensor]:
    """Latent and stop log-probabilities per slot from a run's records, with their masks and stop labels."""
    z, mu, logvar = run.z, run.mu, run.logvar
    R, N = state.shape
    boundary = step_boundaries(N, model.cfg.c, state.device)
    masked = state == MASKED
    # The stop slot: the first masked slot (always a step boundary); everything after it is masked too.
    first_masked = torch.where(masked.any(-1), masked.float().argmax(-1), torch.full((R,), N, device=state.device))
    cols = torch.arange(N, device=state.device)[None]
    stop_labels = (cols == first_masked[:, None]).long()
    reached = cols <= first_masked[:, None]
    logps = {"latent": gaussian_logp(z, mu, logvar, latent_logp)}
    masks = {"latent": reached & (cols < N)}
    if model.cfg.spec.stop:
        stop_logits = run.stop_logits.float()
        logps["stop"] = stop_logits.log_softmax(-1).gather(-1, stop_labels[..., None]).squeeze(-1)
        masks["stop"] = reached & boundary[None]
    return logps, masks, stop_labels


@torch.no_grad()
def rollout(model: LatentReasoner, prompts: list[list[int]], cfg: RLConfig, generator: torch.Generator) -> Trajectories:
    """Sample one trajectory per prompt: latents, stop decisions (by the stop head's distribution), answer tokens."""
    if not model.cfg.spec.stochastic:
        raise ValueError(f"RL needs sampled latents; variant {model.cfg.variant!r} has none (use atp or atp_no_stop)")
    device = next(model.parameters()).device
    R = len(prompts)
    prefix, prefix_mask = model.prefix(prompts)
    state = torch.full((R, model.cfg.slots), ACTIVE, dtype=torch.long, device=device)
    stop_rule = "sample" if model.cfg.spec.stop else None
    run = model.run_prefix_and_slots(
        prefix.to(device), prefix_mask.to(device), state, mode="sample", generator=generator, stop_rule=stop_rule
    )
    state = run.state[:, : run.slots_run]
    logps, masks, stop_labels = _slot_logps(model, run, state, cfg.latent_logp)
    answer, answer_mask, answer_logp = model.decode_answer(run, cfg.max_answer_tokens, cfg.temperature, generator)
    masks["answer"] = answer_mask
    logps["answer"] = answer_logp * answer_mask
    return Trajectories(
        prompts=list(prompts),
        state=state,
        z=run.z,
        feeds=run.feed,
        answer=answer,
        masks=masks,
        stop_labels=stop_labels,
        old={k: v.detach() for k, v in logps.items()},
    )


def replay(model: LatentReasoner, traj: Trajectories, temperature: float, latent_logp: str = "sum") -> dict[str, torch.Tensor]:
    """Log-probabilities of `traj`'s actions under the model's current weights (with gradient).

    `temperature` and `latent_logp` must be the rollout's, so that before an update they equal `traj.old`.
    """
    device = traj.z.device
    prefix, prefix_mask = model.prefix(traj.prompts)
    run = model.run_prefix_and_slots(prefix.to(device), prefix_mask.to(device), traj.state, mode="sample", forced_z=traj.z)
    logps, _, _ = _slot_logps(model, run, traj.state, latent_logp)
    R = len(traj.prompts)
    eot = torch.full((R, 1), model.eot_id, dtype=torch.long, device=device)
    suffix = torch.cat([eot, traj.answer], dim=1)
    suffix_mask = torch.cat([torch.ones_like(eot), traj.masks["answer"].long()], dim=1)
    logits = model.run_suffix(run, suffix, suffix_mask)[:, :-1].float() / temperature
    logps["answer"] = logits.log_softmax(-1).gather(-1, traj.answer[..., None]).squeeze(-1) * traj.masks["answer"]
    return logps


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-8), rows grouped in consecutive blocks of `group_size`.

    A group whose rewards are all equal gets zero advantage (and so no gradient), never a division by zero.
    """
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, keepdim=True)  # unbiased, as TRL's GRPO
    return ((groups - mean) / (std + 1e-8)).view(-1)


LATENT_ACTIONS = ("latent", "stop")  # the paper's "latent" term: the Gaussian latents with the stop decisions


def ppo_clip_loss(
    new: dict,
    old: dict,
    masks: dict,
    advantages: torch.Tensor,
    cfg: RLConfig,
    ref: dict | None = None,
    actions: float | None = None,
    rows: float | None = None,
) -> tuple[torch.Tensor, dict, dict]:
    """PPO-clip over every action (latents, stop decisions, answer tokens); optional k3 KL to `ref`.

    `cfg.loss == "sequence"` (the paper): per trajectory, the masked mean of its latent and stop actions
    (latents weighted by `cfg.latent_weight`) plus the masked mean of its answer tokens, summed over the
    trajectories and divided by `rows` (default: this minibatch's). `"action"`: the weighted sum over every
    action divided by `actions` (default: the actions counted in `masks`). With N processes `rows` /
    `actions` are the global minibatch's, so that each process's loss, clip fraction and KL are its share
    of the global values and summing them over processes gives what one process would compute.

    Returns (loss, stats, parts): `parts[key]` is action type `key`'s share of the loss (they sum to it),
    for the per-type gradient diagnostics.
    """
    R = advantages.shape[0]
    weight = {"latent": cfg.latent_weight}
    per_key, counts, clipped, kls, worst = {}, {}, 0.0, [], 0.0
    for key, new_logp in new.items():
        m = masks[key].float()
        raw = new_logp - old[key]
        log_ratio = raw.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
        ratio = torch.exp(log_ratio)
        adv = advantages[:, None].expand_as(ratio)
        unclipped = ratio * adv
        clipped_obj = ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv
        per_action = -torch.minimum(unclipped, clipped_obj)
        if ref is not None and cfg.kl_coef > 0:
            delta = (ref[key] - new_logp).clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
            kl = torch.exp(delta) - delta - 1
            per_action = per_action + cfg.kl_coef * kl
            kls.append((kl * m).sum())
        per_key[key] = (weight.get(key, 1.0) * per_action * m).sum(-1)  # (R,) weighted sum of this row's actions
        counts[key] = m.sum(-1)
        is_clipped = ((ratio < 1 - cfg.clip_eps) & (adv < 0)) | ((ratio > 1 + cfg.clip_eps) & (adv > 0))
        clipped += float((is_clipped.float() * m).sum())
        if bool(m.any()):
            worst = max(worst, float((raw.detach().abs() * m).max()))
    n_actions = sum(float(c.sum()) for c in counts.values())
    total_actions = max(float(actions if actions is not None else n_actions), 1.0)
    if cfg.loss == "sequence":
        denominator = max(float(rows if rows is not None else R), 1.0)
        parts = {}
        for group in (LATENT_ACTIONS, ("answer",)):
            keys = [k for k in group if k in per_key]
            if not keys:
                continue
            size = torch.clamp(sum(counts[k] for k in keys), min=1.0)  # actions of this term in each row
            for k in keys:
                parts[k] = (per_key[k] / size).sum() / denominator
    else:
        parts = {k: v.sum() / total_actions for k, v in per_key.items()}
    loss = torch.stack(list(parts.values())).sum()
    stats = {"clip_fraction": clipped / total_actions, "actions": total_actions, "max_abs_log_ratio": worst}
    if kls:
        stats["kl"] = float(torch.stack(kls).sum().detach() / total_actions)
    return loss, stats, parts


def _flat(grads: list[torch.Tensor | None], params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def gradient_diagnostics(
    model, trainable: list, traj: Trajectories, advantages: torch.Tensor, cfg: RLConfig, autocast=None
) -> dict[str, float]:
    """How much signal a step's policy gradient carries, measured before its first update (ratio 1).

    The step's groups are split into two halves (different questions, independent rollouts); for each half
    the gradient of every action type's share of the loss is taken. Returns, per action type and for the
    whole loss, the norm of the step's gradient (the mean of the halves') and the cosine between the two
    halves' gradients: near 0, the update is noise at this many trajectories; near 1, a real direction.
    Changes no weights and leaves no gradients behind. Empty when the step has fewer than two groups.
    """
    import contextlib

    from atp.modeling import checkpoint_in_eval

    autocast = autocast or contextlib.nullcontext()
    R, G = len(traj.prompts), cfg.group_size
    groups = R // G
    if groups < 2:
        return {}
    cut = (groups // 2) * G
    halves = [list(range(cut)), list(range(cut, R))]
    grads: list[dict[str, torch.Tensor]] = []
    for index in halves:
        part = traj.rows(index)
        with autocast, checkpoint_in_eval(model):
            new = replay(model, part, cfg.temperature, cfg.latent_logp)
        _, _, parts = ppo_clip_loss(new, part.old, part.masks, advantages[torch.tensor(index, device=advantages.device)], cfg)
        keys = list(parts)
        half = {}
        for i, key in enumerate(keys):
            g = torch.autograd.grad(parts[key], trainable, retain_graph=i < len(keys) - 1, allow_unused=True)
            half[key] = _flat(list(g), trainable)
        grads.append(half)
    out = {}
    for key in grads[0]:
        a, b = grads[0][key], grads[1].get(key, torch.zeros_like(grads[0][key]))
        out[f"rl/grad_norm/{key}"] = float(((a + b) / 2).norm())
        out[f"rl/grad_cosine/{key}"] = _cosine(a, b)
    a, b = sum(grads[0].values()), sum(grads[1].values())
    out["rl/grad_norm/all"] = float(((a + b) / 2).norm())
    out["rl/grad_cosine/all"] = _cosine(a, b)
    return out


# ---------------------------------------------------------------- N processes


def all_reduce_sum(values: list[float], world_size: int, device) -> list[float]:
    """The sums of `values` over all processes (the values themselves on one process)."""
    if world_size == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def sync_gradients(params: list[torch.Tensor], world_size: int, bucket_elements: int = 1 << 24) -> None:
    """Sum the gradients of `params` over all processes (in place), in flat buckets of about `bucket_elements`.

    The update calls the latent loop's pieces directly, not a module's `forward`, so DDP's hooks would not
    see it; an explicit all-reduce does the same job. A parameter with no gradient on any process keeps
    `grad = None` (AdamW then skips it, as on one process); one with a gradient on some process only gets
    zeros on the others.
    """
    if world_size == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(has)
    live = []
    for p, n in zip(params, has.tolist()):
        if n:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(live):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elements or i == len(live) - 1:
            flat = _flatten_dense_tensors(bucket)
            torch.distributed.all_reduce(flat)
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)
            bucket, size = [], 0


def ppo_update(
    model,
    optimizer,
    trainable: list,
    traj: Trajectories,
    advantages: torch.Tensor,
    cfg: RLConfig,
    generator: torch.Generator,
    grad_clip: float,
    ref_logps: dict | None = None,
    world_size: int = 1,
    autocast=None,
) -> dict[str, list[float]]:
    """`cfg.epochs` passes of PPO-clip updates over this process's rollouts `traj`; per-update statistics.

    With N processes each holds Q*G/N rows and contributes `minibatch_size / N` of them to every global
    minibatch of `minibatch_size`: the loss is normalised by the action count of the global minibatch
    (all-reduced) and the gradients are summed over processes, so one update is the update one process
    would make on the union of the rows. Raises NonFiniteLoss (on every process alike) before a
    non-finite loss or gradient reaches the weights (atp.train.apply_gradients).
    """
    import contextlib

    from atp.modeling import checkpoint_in_eval

    autocast = autocast or contextlib.nullcontext()
    device = traj.z.device
    per_rank = cfg.minibatch_size // world_size
    R = len(traj.prompts)
    stats: dict[str, list[float]] = {
        "loss": [],
        "clip_fraction": [],
        "grad_norm": [],
        "kl": [],
        "first_clip_fraction": [],
        "first_max_abs_log_ratio": [],
    }
    for _ in range(cfg.epochs):
        order = torch.randperm(R, generator=generator, device=generator.device).tolist()
        for start in range(0, R, per_rank):
            index = order[start : start + per_rank]
            part = traj.rows(index)
            (actions,) = all_reduce_sum([sum(float(m.sum()) for m in part.masks.values())], world_size, device)
            with (
                autocast,
                checkpoint_in_eval(model),
            ):  # checkpointed layers recompute in eval mode too (train.gradient_checkpointing)
                new = replay(model, part, cfg.temperature, cfg.latent_logp)
            ref_part = {k: v[torch.tensor(index, device=v.device)] for k, v in ref_logps.items()} if ref_logps else None
            adv_part = advantages[torch.tensor(index, device=advantages.device)]
            loss, info, _ = ppo_clip_loss(
                new, part.old, part.masks, adv_part, cfg, ref_part, actions=actions, rows=cfg.minibatch_size
            )
            if not stats["first_clip_fraction"]:  # before any update rollout and replay must agree: ratio 1, nothing clipped
                first_clip, first_ratio = all_reduce_sum([info["clip_fraction"], info["max_abs_log_ratio"]], world_size, device)
                stats["first_clip_fraction"].append(first_clip)
                stats["first_max_abs_log_ratio"].append(first_ratio / world_size)
            loss.backward()
            sync_gradients(trainable, world_size)
            loss_value, clip_fraction, kl = all_reduce_sum(
                [loss.item(), info["clip_fraction"], info.get("kl", 0.0)], world_size, device
            )
            grad_norm = apply_gradients(optimizer, trainable, grad_clip, loss_value)  # the same on every process
            stats["loss"].append(loss_value)
            stats["clip_fraction"].append(clip_fraction)
            stats["grad_norm"].append(grad_norm)
            if "kl" in info:
                stats["kl"].append(kl)
    return stats


# ---------------------------------------------------------------- the RL stage's step


def rl_settings(config: dict) -> tuple[RLConfig, RewardConfig]:
    """(RLConfig, RewardConfig) of a job config's `rl` section."""
    from atp.config import to_dataclass
    from atp.rewards import RewardConfig

    rl_cfg = to_dataclass(RLConfig, config["rl"], "rl")
    return rl_cfg, to_dataclass(RewardConfig, rl_cfg.rewards or {}, "rl.rewards")


def freeze_decoder(model: LatentReasoner) -> LatentReasoner:
    """RL trains the backbone, the latent head and the stop head; the step decoder (and its projection) stays as SFT left it."""
    for name, param in model.named_parameters():
        if name.startswith(("decoder.", "decoder_proj.")):
            param.requires_grad_(False)
    return model


def check_world(cfg: RLConfig, world_size: int) -> None:
    """N processes share each step's questions (whole groups) and each minibatch evenly, or the run is refused."""
    from atp.config import ConfigError

    if cfg.questions % world_size:
        raise ConfigError(
            f"config key 'rl.questions': {cfg.questions} questions per RL step do not divide among {world_size} processes "
            f"(each process rolls out whole groups); use a multiple of {world_size}"
        )
    if cfg.minibatch_size % world_size:
        raise ConfigError(
            f"config key 'rl.minibatch_size': {cfg.minibatch_size} trajectories per update do not divide among "
            f"{world_size} processes; "
            f"use a multiple of {world_size}"
        )


def grpo_step(
    model,
    optimizer,
    trainable,
    prompts,
    answers,
    rl_cfg: RLConfig,
    reward_cfg,
    tokenizer,
    generator,
    grad_clip: float,
    ref=None,
    dist=None,
    bf16: bool = False,
    diagnose: bool = False,
) -> tuple[dict, list[dict]]:
    """One RL step: rollouts, rewards, group advantages, one pass of PPO-clip updates. Returns (metrics, trajectories).

    `prompts` and `answers` are this process's rows (whole groups). With `dist` of N processes the update
    is synchronised (see ppo_update) and the metrics and trajectories are those of all processes'
    rows, in rank order (every process returns the same). `bf16`: autocast for rollouts and replays.
    `diagnose`: also measure the gradient per action type and its two-half cosine (gradient_diagnostics,
    on this process's rows) before the update. With `rl_cfg.frozen` nothing is updated.
    """
    import statistics

    from atp.rewards import correct, total

    world_size, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.eval()  # no dropout anywhere; eval only makes sampling and replay see the same network
    with autocast:
        traj = rollout(model, prompts, rl_cfg, generator)
        # The log-probabilities the ratios start from come from the replay path itself (TRL computes its old
        # log-probabilities the same way): the sampling loop decodes token by token, the replay in one pass, and
        # their roundings differ (4.8e-7 in fp32 on the tiny test policy, more under bf16 on a GPU), so the first
        # minibatch's ratio is exactly 1 and nothing is clipped before an update.
        with torch.no_grad():
            traj.old = {k: v.detach() for k, v in replay(model, traj, rl_cfg.temperature, rl_cfg.latent_logp).items()}
        used = traj.latents_used.tolist()
        steps = model.decode_steps([traj.feeds[b, :n].float().cpu() for b, n in enumerate(used)], tokenizer)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in traj.answer_ids(model.eos_id)]
    rewards = total(completions, answers if reward_cfg.needs_gold else None, steps, reward_cfg)
    accuracy = rewards["correct"] if reward_cfg.needs_gold else correct(completions, answers=answers)  # monitoring only here
    # Groups are whole on each process, so the advantages need nothing from the other processes.
    advantages = group_advantages(torch.tensor(rewards["total"]), rl_cfg.group_size).to(traj.z.device)
    ref_logps = None
    if ref is not None and rl_cfg.kl_coef > 0:
        with torch.no_grad(), autocast:
            ref_logps = {k: v.detach() for k, v in replay(ref, traj, rl_cfg.temperature, rl_cfg.latent_logp).items()}
    diagnostics = gradient_diagnostics(model, trainable, traj, advantages, rl_cfg, autocast) if diagnose else {}
    stats = (
        {}
        if rl_cfg.frozen
        else ppo_update(
            model, optimizer, trainable, traj, advantages, rl_cfg, generator, grad_clip, ref_logps, world_size, autocast
        )
    )
    R = len(prompts)
    mine = {
        "rewards": rewards,
        "accuracy": list(accuracy),
        "used": used,
        "answer_tokens": traj.masks["answer"].sum(-1).tolist(),
        "trajectories": [
            {
                "question_row": rank * R + b,
                "latents": used[b],
                "latent_steps": steps[b],
                "completion": completions[b],
                "gold": answers[b],
                **{f"reward_{k}": v[b] for k, v in rewards.items()},
                "advantage": round(float(advantages[b]), 6),
            }
            for b in range(R)
        ],
    }
    parts = [mine]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, mine)
    rewards = {k: [v for p in parts for v in p["rewards"][k]] for k in rewards}
    accuracy = [v for p in parts for v in p["accuracy"]]
    used = [v for p in parts for v in p["used"]]
    answer_tokens = [v for p in parts for v in p["answer_tokens"]]
    trajectories = [t for p in parts for t in p["trajectories"]]
    groups = torch.tensor(rewards["total"]).view(-1, rl_cfg.group_size)
    metrics = {f"rewards/{k}/mean": statistics.fmean(v) for k, v in rewards.items()}
    metrics.update(
        {
            "rewards/total/group_std": float(groups.std(-1).mean()),
            "rl/accuracy": statistics.fmean(accuracy),
            "rl/latents": statistics.fmean(used),
            "rl/answer_tokens": statistics.fmean(answer_tokens),
            "rl/zero_advantage_groups": float((groups.std(-1) == 0).float().mean()),
            **{f"rl/{k}": statistics.fmean(v) for k, v in stats.items() if v},
            **diagnostics,
        }
    )
    return metrics, trajectories


class GRPOTask:
    """The RL stage as atp.train.run_loop runs it: each step draws `rl.questions` training questions (a fixed
    schedule, equal lengths: drawn at random, not grouped by length, which would group them by difficulty),
    repeats each `rl.group_size` times, gives this process its whole groups and takes one `grpo_step` with a
    generator of (seed, step, rank). Every step is logged; the run's metrics are the mean of its last
    `train.log_every` steps; every `rl.trajectories_every` steps process 0 writes sampled trajectories."""

    desc = "rl"
    log_every = 1

    def __init__(
        self,
        model,
        optimizer,
        trainable: list,
        records: list[dict],
        prompts: list[list[int]],
        rl_cfg: RLConfig,
        reward_cfg,
        tokenizer,
        train_cfg,
        seed: int,
        dist,
        ref,
        tracker,
        traj_dir,
    ):
        from atp.train import batch_schedule

        self.model, self.optimizer, self.trainable, self.records, self.prompts = model, optimizer, trainable, records, prompts
        self.rl_cfg, self.reward_cfg, self.tokenizer, self.train_cfg = rl_cfg, reward_cfg, tokenizer, train_cfg
        self.seed, self.dist, self.ref, self.tracker, self.traj_dir = seed, dist, ref, tracker, traj_dir
        self.schedule = batch_schedule([0] * len(prompts), rl_cfg.questions, train_cfg.steps, seed)
        self.summary_window = train_cfg.log_every
        self.rows: list[int] = []
        self.trajectories: list[dict] = []

    def step(self, step: int) -> dict[str, float]:
        import time

        from atp.train import step_generator

        cfg, dist = self.rl_cfg, self.dist
        self.rows = [i for i in self.schedule[step] for _ in range(cfg.group_size)]
        share = len(self.rows) // dist.world_size  # this process's rows: whole groups
        mine = self.rows[dist.rank * share : (dist.rank + 1) * share]
        started = time.time()
        metrics, self.trajectories = grpo_step(
            self.model,
            self.optimizer,
            self.trainable,
            [self.prompts[i] for i in mine],
            [self.records[i]["answer"] for i in mine],
            cfg,
            self.reward_cfg,
            self.tokenizer,
            step_generator(self.seed, step, dist.rank, dist.device),
            self.train_cfg.grad_clip,
            self.ref,
            dist,
            self.train_cfg.bf16,
            diagnose=bool(cfg.diagnostics_every) and step % cfg.diagnostics_every == 0,
        )
        metrics["rl/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["rl/step_seconds"] = time.time() - started
        return metrics

    def window_metrics(self, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
        return window[-1]  # one step per log point

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{metrics['rewards/total/mean']:.3f}", "acc": f"{metrics['rl/accuracy']:.2f}"}

    def on_log(self, done: int, metrics: dict[str, float]) -> None:
        from atp.data.records import write_jsonl

        if self.dist.is_main and (done % self.rl_cfg.trajectories_every == 0 or done == self.train_cfg.steps):
            for t in self.trajectories:
                t["question"] = self.records[self.rows[t["question_row"]]]["question"]
            path = self.traj_dir / f"step_{done:06d}.jsonl"
            write_jsonl(path, self.trajectories[: self.rl_cfg.trajectories_logged])
            self.tracker.log_artifact(path, "trajectories")

    def summary(self, logged: list[dict[str, float]]) -> dict[str, float]:
        import statistics

        keys = sorted({k for m in logged for k in m if not k.endswith("seconds")})  # diagnostics come every few steps only
        return {f"train/{k.removeprefix('rl/')}": statistics.fmean(m[k] for m in logged if k in m) for k in keys}
