"""Group-normalised advantages, the PPO-clip loss over every action, and the gradient diagnostics."""

from __future__ import annotations

import torch

from atp.config import RLConfig
from atp.rl.policy import Trajectories, replay


def uniform_groups(rewards, group_size: int) -> torch.Tensor:
    """(groups,) True where a group's rewards, rows in consecutive blocks of `group_size`, are all equal (tested as
    equal, not through a std): GRPO gets no advantage from such a group."""
    groups = torch.as_tensor(rewards, dtype=torch.float64).view(-1, group_size)
    return (groups == groups[:, :1]).all(-1)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-8), rows grouped in consecutive blocks of `group_size` (float32).

    A group whose rewards are all equal gets exactly zero advantage (and so no gradient), never a division by
    zero. Equal rewards are tested as equal, not through the std: eight float32 copies of 1.6 have a mean one
    rounding step away from 1.6, and (r - mean) / (0 + 1e-8) then gave every row of the group the same advantage
    of about +-12, which pushed all of a uniform group's trajectories down (or up) at once (found by token GRPO's
    positive control on 2026-12-06; every RL run before that had it). Computed in float64.
    """
    groups = rewards.double().view(-1, group_size)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, keepdim=True)  # unbiased, as TRL's GRPO
    uniform = uniform_groups(groups, group_size).unsqueeze(-1)
    return torch.where(uniform, torch.zeros_like(groups), (groups - mean) / (std + 1e-8)).float().view(-1)


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
    (latents weighted by `cfg.latent_weight`) plus the masked mean of its answer tokens (weighted by
    `cfg.answer_weight`), summed over the trajectories and divided by `rows` (default: this minibatch's).
    `"action"`: the weighted sum over every action divided by `actions` (default: the actions counted in `masks`).
    With N processes `rows` / `actions` are the global minibatch's, so that each process's loss, clip fraction
    and KL are its share of the global values and summing them over processes gives what one process would compute.

    Returns (loss, stats, parts): `parts[key]` is action type `key`'s share of the loss (they sum to it),
    for the per-type gradient diagnostics.
    """
    R = advantages.shape[0]
    weight = {"latent": cfg.latent_weight, "answer": cfg.answer_weight}
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
            new = replay(model, part, cfg)
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
