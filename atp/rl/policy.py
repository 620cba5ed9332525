"""Trajectories: sampling them from a policy (rollout) and scoring them again under its current weights (replay).

The latent policy (a LatentReasoner) is the method's; a TokenPolicy (atp.rl.tokens: a language model whose actions
are the tokens it writes) is the machinery's positive control. Both go through these two functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from atp.config import RLConfig
from atp.latent import ACTIVE, MASKED, LatentReasoner, SlotRun, answer_ids, step_boundaries

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Trajectories:
    """Sampled trajectories of R rows (one row per rollout) and their log-probabilities when sampled.

    A token policy's trajectories have no latents: `state`, `z`, `feeds` and `stop_labels` are None and
    `answer` is everything it wrote (CoT and answer).
    """

    prompts: list[list[int]]
    answer: torch.Tensor  # (R, T) answer tokens, EOS included, padded
    masks: dict[str, torch.Tensor]  # latent (R, N), stop (R, N), answer (R, T): which actions count
    old: dict[str, torch.Tensor]  # log-probabilities under the sampling weights, keyed like masks
    state: torch.Tensor | None = None  # (R, N) ACTIVE / MASKED slots, as the rollout left them
    z: torch.Tensor | None = None  # (R, N, d) the latents drawn
    feeds: torch.Tensor | None = None  # (R, N, d) the vectors fed back (for the step decoder)
    stop_labels: torch.Tensor | None = None  # (R, N) 1 where the row stopped
    noise_ratio: torch.Tensor | None = None  # (R,) mean over the row's latents of the noise over the mean (a diagnostic)

    def rows(self, index: list[int]) -> Trajectories:
        idx = torch.tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return Trajectories(
            prompts=[self.prompts[i] for i in index],
            state=pick(self.state),
            z=pick(self.z),
            feeds=pick(self.feeds),
            answer=pick(self.answer),
            masks={k: pick(v) for k, v in self.masks.items()},
            stop_labels=pick(self.stop_labels),
            noise_ratio=pick(self.noise_ratio),
            old={k: pick(v) for k, v in self.old.items()},
        )

    @property
    def device(self) -> torch.device:
        return self.answer.device

    @property
    def latents_used(self) -> torch.Tensor:
        if self.state is None:
            return torch.zeros(len(self.prompts), dtype=torch.long)
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
    model: LatentReasoner,
    run: SlotRun,
    state: torch.Tensor,
    latent_logp: str = "sum",
    stop_labels: torch.Tensor | None = None,
) -> tuple[dict, dict, torch.Tensor]:
    """Latent and stop log-probabilities per slot from a run's records, with their masks and stop labels
    (`stop_labels` given: a replay scores the rollout's stop decisions)."""
    if model.cfg.spec.compress:
        return _compressed_slot_logps(model, run, state, latent_logp, stop_labels)
    z, mu, logvar = run.z, run.mu, run.logvar
    state = state[:, : run.slots_run]  # the slots run (a stop-head variant's stop is among them)
    R, N = state.shape
    boundary = step_boundaries(N, model.cfg.c, state.device)
    masked = state == MASKED
    # The stop slot: the first masked slot (always a step boundary); everything after it is masked too.
    first_masked = torch.where(masked.any(-1), masked.float().argmax(-1), torch.full((R,), N, device=state.device))
    cols = torch.arange(N, device=state.device)[None]
    if stop_labels is None:
        stop_labels = (cols == first_masked[:, None]).long()
    reached = cols <= first_masked[:, None]
    logps = {"latent": gaussian_logp(z, mu, logvar, latent_logp)}
    masks = {"latent": reached & (cols < N)}
    if model.cfg.spec.stop:
        stop_logits = run.stop_logits.float()
        logps["stop"] = stop_logits.log_softmax(-1).gather(-1, stop_labels[..., None]).squeeze(-1)
        masks["stop"] = reached & boundary[None]
    return logps, masks, stop_labels


def _compressed_slot_logps(model, run, state, latent_logp, stop_labels) -> tuple[dict, dict, torch.Tensor]:
    """`_slot_logps` of CoLaR: its latents (CoLaR's RL averages their log-density over dimensions, `rl.latent_logp:
    mean`) and its stops, the LM head's <eot> or not after each latent (`SlotRun.stop_logits`). A row that ran k
    latents decided k times, the last <eot>; one that ran the whole budget decided N - 1 times, never <eot> (the
    last slot's decision ends nothing). CoLaR's own RL scores only the <eot>; this scores each decision, as for a
    stop head, so that RL can also teach the policy to go on. `state` is the rollout's over all N slots (a
    replay's may be cut short: it gives `stop_labels`)."""
    n = run.z.shape[1]
    cols = torch.arange(n, device=state.device)[None]
    used = (state == ACTIVE).sum(-1)
    if stop_labels is None:
        said_eot = used < model.cfg.slots
        stop_labels = ((cols == used[:, None] - 1) & said_eot[:, None]).long()
    decided = used.clamp(max=model.cfg.slots - 1)  # decisions that counted
    logps = {
        "latent": gaussian_logp(run.z, run.mu, run.logvar, latent_logp),
        "stop": run.stop_logits.float().log_softmax(-1).gather(-1, stop_labels[..., None]).squeeze(-1),
    }
    masks = {"latent": cols < used[:, None], "stop": cols < decided[:, None]}
    return logps, masks, stop_labels


def is_token_policy(model) -> bool:
    from atp.rl.tokens import TokenPolicy

    return isinstance(model, TokenPolicy)


@torch.no_grad()
def rollout(model, prompts: list[list[int]], cfg: RLConfig, generator: torch.Generator) -> Trajectories:
    """Sample one trajectory per prompt: latents, stop decisions (by the stop head's distribution), answer tokens
    (a token policy: its written completion, atp.rl.tokens)."""
    if is_token_policy(model):
        from atp.rl.tokens import token_rollout

        return token_rollout(model, prompts, cfg, generator)
    if not model.cfg.spec.stochastic:
        raise ValueError(f"RL needs sampled latents; variant {model.cfg.variant!r} has none (atp, atp_no_stop, colar)")
    device = next(model.parameters()).device
    R = len(prompts)
    prefix, prefix_mask = model.prefix(prompts)
    state = torch.full((R, model.cfg.slots), ACTIVE, dtype=torch.long, device=device)
    stop_rule = "sample" if model.cfg.spec.stop or model.cfg.spec.compress else None  # the stop sampled
    run = model.run_prefix_and_slots(
        prefix.to(device),
        prefix_mask.to(device),
        state,
        mode="sample",
        generator=generator,
        stop_rule=stop_rule,
        latent_temperature=cfg.latent_temperature,
    )
    logps, masks, stop_labels = _slot_logps(model, run, run.state, cfg.latent_logp)
    state = run.state[:, : run.slots_run]
    answer, answer_mask, answer_logp = model.decode_answer(run, cfg.max_answer_tokens, cfg.temperature, generator)
    masks["answer"] = answer_mask
    logps["answer"] = answer_logp * answer_mask
    reached = masks["latent"].float()
    ratio = model.noise_over_mean(run)
    return Trajectories(
        noise_ratio=(ratio * reached).sum(-1) / reached.sum(-1).clamp(min=1.0),
        prompts=list(prompts),
        state=state,
        z=run.z,
        feeds=run.feed,
        answer=answer,
        masks=masks,
        stop_labels=stop_labels,
        old={k: v.detach() for k, v in logps.items()},
    )


def replay(model, traj: Trajectories, cfg: RLConfig) -> dict[str, torch.Tensor]:
    """Log-probabilities of `traj`'s actions under the model's current weights (with gradient).

    `cfg` must be the rollout's (temperatures, `latent_logp`), so that before an update they equal `traj.old`.
    """
    if is_token_policy(model):
        from atp.rl.tokens import token_replay

        return token_replay(model, traj, cfg)
    device = traj.z.device
    prefix, prefix_mask = model.prefix(traj.prompts)
    run = model.run_prefix_and_slots(
        prefix.to(device),
        prefix_mask.to(device),
        traj.state,
        mode="sample",
        forced_z=traj.z,
        latent_temperature=cfg.latent_temperature,
    )
    logps, _, _ = _slot_logps(model, run, traj.state, cfg.latent_logp, traj.stop_labels)
    R = len(traj.prompts)
    eot = torch.full((R, 1), model.eot_id, dtype=torch.long, device=device)
    suffix = torch.cat([eot, traj.answer], dim=1)
    suffix_mask = torch.cat([torch.ones_like(eot), traj.masks["answer"].long()], dim=1)
    logits = model.run_suffix(run, suffix, suffix_mask)[:, :-1].float() / cfg.temperature
    logps["answer"] = logits.log_softmax(-1).gather(-1, traj.answer[..., None]).squeeze(-1) * traj.masks["answer"]
    return logps
