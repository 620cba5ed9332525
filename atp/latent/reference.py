"""The latent loop without the KV cache: every slot recomputes the whole sequence so far.

The reference the cached loop (LatentReasoner.run_prefix_and_slots + run_suffix) is tested against, and
the baseline of scripts/bench_latent_loop.py; nothing in the pipeline runs it.
"""

from __future__ import annotations

import torch

from atp.latent.layout import ACTIVE
from atp.latent.reasoner import LatentReasoner


def recomputed_logits(
    model: LatentReasoner,
    prefix: torch.Tensor,
    prefix_mask: torch.Tensor,
    slot_state: torch.Tensor,
    suffix: torch.Tensor,
    suffix_mask: torch.Tensor,
    mode: str = "mu",
) -> torch.Tensor:
    """Logits over `suffix` after `prefix` and the slots of `slot_state` (no stop rule), each slot's hidden state
    computed by a forward pass over everything before it."""
    core, B, N = model.core, *slot_state.shape
    embeds, mask = model.embed(prefix), prefix_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    h = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state[:, -1]
    next_pos = positions[:, -1] + 1
    norm = model.embedding_norm()
    for j in range(N):
        if model.cfg.spec.feed == "pause":
            feed = model.feed_scale(model.pause, norm).expand(B, -1)
        else:
            feed = model.latent(h, norm, mode)["feed"]
        active = (slot_state[:, j] == ACTIVE).long()
        embeds = torch.cat([embeds, feed[:, None]], dim=1)
        mask = torch.cat([mask, active[:, None]], dim=1)
        positions = torch.cat([positions, next_pos[:, None]], dim=1)
        h = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state[:, -1]
        next_pos = next_pos + active
    suffix_pos = next_pos[:, None] + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = core(
        inputs_embeds=torch.cat([embeds, model.embed(suffix)], dim=1),
        attention_mask=torch.cat([mask, suffix_mask], dim=1),
        position_ids=torch.cat([positions, suffix_pos], dim=1),
    ).last_hidden_state[:, -suffix.shape[1] :]
    return model.logits(hidden)
