"""PPO-clip updates over one step's rollouts, on one process or synchronised over N."""

from __future__ import annotations

import torch

from atp.config import RLConfig
from atp.rl.loss import ppo_clip_loss
from atp.rl.policy import Trajectories, replay
from atp.train import apply_gradients


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
    device = traj.device
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
                new = replay(model, part, cfg)
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
