"""A language model as an RL policy whose actions are the tokens it writes: token-level GRPO on written CoT.

This is the RL machinery's positive control (and the CoT + RL baseline practitioners compare latent methods
to): the same rewards, group advantages, PPO-clip loss, update and loop as GRPO over latents, with a policy
that has no latents. A trajectory is the completion the model samples after the question (its CoT steps and
`### answer`, EOS included); every token is one action of the loss's "answer" term, so the paper's sequence
loss takes a per-trajectory mean of token log-ratios, as token GRPO does. The coherence reward reads the
written steps, the step decoder's part for latents.

`TokenPolicy` holds the model and the ids its sampling needs; `token_rollout` samples with the KV cache and
the step's generator, `token_replay` scores the same tokens again in one pass (with gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from atp.config import RLConfig


class TokenPolicy(nn.Module):
    """A causal LM (optionally LoRA-wrapped) as a token-level policy; `lm` is what is saved and evaluated."""

    def __init__(self, lm, eos_id: int, pad_id: int):
        super().__init__()
        self.lm, self.eos_id, self.pad_id = lm, int(eos_id), int(pad_id)

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids that count only the real tokens of left-padded rows."""
        return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad_prompts(policy: TokenPolicy, prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    from atp.batches import left_pad

    ids, mask = left_pad(prompts, policy.pad_id)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def token_rollout(policy: TokenPolicy, prompts: list[list[int]], cfg: RLConfig, generator: torch.Generator):
    """Sample one completion per prompt at `cfg.temperature` (no top-k), at most `cfg.max_cot_tokens` tokens.

    Returns Trajectories with `answer` the completion tokens (padding after a row's EOS), `masks["answer"]`
    the tokens taken (through the EOS) and `old["answer"]` their log-probabilities when sampled.
    """
    from transformers import DynamicCache

    from atp.rl.policy import Trajectories

    device = next(policy.parameters()).device
    ids, mask = _pad_prompts(policy, prompts, device)
    R, T = ids.shape[0], cfg.max_cot_tokens
    cache = DynamicCache()
    out = policy.lm(
        input_ids=ids, attention_mask=mask, position_ids=policy.positions(mask), past_key_values=cache, use_cache=True
    )
    logits = out.logits[:, -1]
    pos = mask.sum(-1)  # the next position of each row
    tokens = torch.full((R, T), policy.pad_id, dtype=torch.long, device=device)
    taken = torch.zeros((R, T), dtype=torch.bool, device=device)
    logps = torch.zeros((R, T), device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    for t in range(T):
        logp = (logits.float() / cfg.temperature).log_softmax(-1)
        token = torch.multinomial(logp.exp(), 1, generator=generator)
        logps[:, t] = logp.gather(-1, token).squeeze(-1)
        tokens[:, t] = torch.where(done, torch.full_like(token[:, 0], policy.pad_id), token[:, 0])
        taken[:, t] = ~done
        done = done | (token[:, 0] == policy.eos_id)
        if bool(done.all()) or t == T - 1:
            break
        mask = torch.cat([mask, torch.ones(R, 1, dtype=mask.dtype, device=device)], dim=1)
        out = policy.lm(input_ids=token, attention_mask=mask, position_ids=pos[:, None], past_key_values=cache, use_cache=True)
        logits, pos = out.logits[:, -1], pos + 1
    width = int(taken.any(0).sum())  # columns some row took
    tokens, taken, logps = tokens[:, :width], taken[:, :width], logps[:, :width]
    return Trajectories(prompts=list(prompts), answer=tokens, masks={"answer": taken}, old={"answer": logps * taken})


def token_replay(policy: TokenPolicy, traj, cfg: RLConfig) -> dict[str, torch.Tensor]:
    """Log-probabilities of `traj`'s completion tokens under the current weights, in one pass (with gradient)."""
    device = traj.answer.device
    ids, mask = _pad_prompts(policy, traj.prompts, device)
    width = ids.shape[1]
    full = torch.cat([ids, traj.answer], dim=1)
    full_mask = torch.cat([mask, traj.masks["answer"].long()], dim=1)
    logits = policy.lm(input_ids=full, attention_mask=full_mask, position_ids=policy.positions(full_mask)).logits
    logits = logits[:, width - 1 : -1].float() / cfg.temperature  # the positions that predict the completion
    logp = logits.log_softmax(-1).gather(-1, traj.answer[..., None]).squeeze(-1)
    return {"answer": logp * traj.masks["answer"]}
