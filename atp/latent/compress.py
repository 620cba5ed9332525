"""CoLaR's supervised stage (Tan et al. 2025, "Think Silently, Think Fast: Dynamic Latent Compression of LLM
Reasoning Chains"; docs/method.md, section 5.2): the written CoT compressed r tokens to one latent, in one
teacher-forced pass.

Each example draws a compression factor r in 1..`latent.max_compression` (a pure function of seed, step and
example). Its CoT tokens (the step lines) are cut into chunks of r from the front; a chunk's latent is the sum of
its token embeddings over sqrt(its length) (CoLaR's `sqrt_mean`). The row is

    prompt, r x <|latent|> (the factor the model is asked for), <|start-latent|>, the chunk latents, <|end-latent|>,
    the answer line, EOS

The LM head is trained at <|start-latent|> and at every chunk to predict one token drawn at random from the next
chunk (CoLaR's compressed next-token prediction), and <|end-latent|> after the last one; then the answer. The
latent head (a Gaussian over the embedding space in units of the embedding matrix's std) is trained to predict the
next chunk's latent from the same hidden states: the mean squared error of a reparameterised draw against the
detached target (CoLaR's `embed_modeling_loss: mse`). At inference (atp.latent.reasoner) the model asks for
`latent.compression`, feeds the head's draws scaled back by the std, and stops when its LM head says <|end-latent|>.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from atp.batches import IGNORE

if TYPE_CHECKING:
    from atp.latent.layout import LatentRecord
    from atp.latent.reasoner import LatentReasoner


def chunks(cot: list[int], r: int) -> list[list[int]]:
    """The CoT tokens in chunks of r from the front (the last one may be shorter)."""
    return [cot[i : i + r] for i in range(0, len(cot), r)]


def compression_factor(seed: int, step: int, index: int, max_compression: int) -> int:
    return random.Random(f"{seed}-{step}-{index}-compression").randint(1, max_compression)


@dataclass
class CompressedRow:
    """One training row: token prefix, CoT chunks (each one latent), token suffix, and what the LM predicts where."""

    prefix: list[int]  # prompt + r x <|latent|> + <|start-latent|>
    chunks: list[list[int]]
    suffix: list[int]  # <|end-latent|> + answer line + EOS
    chunk_targets: list[int]  # at <|start-latent|> and at each chunk: a token of the next chunk, then <|end-latent|>

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.chunks) + len(self.suffix)


def plan_row(model: LatentReasoner, record: LatentRecord, r: int, rng: random.Random) -> CompressedRow:
    cot = [t for step in record.steps for t in step]
    parts = chunks(cot, r)
    return CompressedRow(
        prefix=record.prompt + [model.latent_id] * r + [model.bot_id],
        chunks=parts,
        suffix=[model.eot_id] + record.answer,
        chunk_targets=[rng.choice(c) for c in parts] + [model.eot_id],
    )


@dataclass
class CompressedBatch:
    """One micro-batch of CoLaR rows as tensors, right-padded to one width L."""

    token_ids: torch.Tensor  # (B, L) token ids at token positions, pad elsewhere
    chunk_ids: torch.Tensor  # (B, L, r_max) a chunk's token ids at its latent position, pad elsewhere
    chunk_weights: torch.Tensor  # (B, L, r_max) 1/sqrt(chunk length) on a chunk's tokens, 0 elsewhere
    is_chunk: torch.Tensor  # (B, L) bool
    mask: torch.Tensor  # (B, L) attention mask
    labels: torch.Tensor  # (B, L) what the LM head predicts at each position, IGNORE where nothing
    latent_from: torch.Tensor  # (B, J) the position whose hidden state predicts chunk j's latent (-1: none)
    latent_at: torch.Tensor  # (B, J) chunk j's position


def make_compressed_batch(model: LatentReasoner, rows: list[CompressedRow], device) -> CompressedBatch:
    B, L = len(rows), max(row.length for row in rows)
    r_max = max((len(c) for row in rows for c in row.chunks), default=1)
    J = max(len(row.chunks) for row in rows)
    token_ids = torch.full((B, L), model.pad_id, dtype=torch.long)
    chunk_ids = torch.full((B, L, r_max), model.pad_id, dtype=torch.long)
    chunk_weights = torch.zeros((B, L, r_max))
    is_chunk = torch.zeros((B, L), dtype=torch.bool)
    mask = torch.zeros((B, L), dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    latent_from = torch.full((B, J), -1, dtype=torch.long)
    latent_at = torch.full((B, J), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        P, n = len(row.prefix), len(row.chunks)
        token_ids[b, :P] = torch.tensor(row.prefix)
        for j, chunk in enumerate(row.chunks):
            chunk_ids[b, P + j, : len(chunk)] = torch.tensor(chunk)
            chunk_weights[b, P + j, : len(chunk)] = 1.0 / math.sqrt(len(chunk))
            is_chunk[b, P + j] = True
            latent_from[b, j], latent_at[b, j] = P - 1 + j, P + j
        token_ids[b, P + n : row.length] = torch.tensor(row.suffix)
        mask[b, : row.length] = 1
        labels[b, P - 1 : P + n] = torch.tensor(row.chunk_targets)
        labels[b, P + n : row.length - 1] = torch.tensor(row.suffix[1:])
    tensors = (token_ids, chunk_ids, chunk_weights, is_chunk, mask, labels, latent_from, latent_at)
    return CompressedBatch(*(t.to(device) for t in tensors))


def compressed_loss_sums(model: LatentReasoner, batch: CompressedBatch) -> dict[str, torch.Tensor]:
    """Sums over a micro-batch: `ce` (the LM head: compressed next-token prediction, <|end-latent|>, the answer) and
    `embed` (the latent head's squared error per dimension, summed over the chunks it predicts)."""
    embed = model.backbone.get_input_embeddings()
    tokens = embed(batch.token_ids)
    compressed = (embed(batch.chunk_ids) * batch.chunk_weights.unsqueeze(-1).to(tokens.dtype)).sum(2)
    inputs = torch.where(batch.is_chunk.unsqueeze(-1), compressed, tokens)
    positions = torch.arange(inputs.shape[1], device=inputs.device).expand(inputs.shape[0], -1)
    hidden = model.core(inputs_embeds=inputs, attention_mask=batch.mask, position_ids=positions).last_hidden_state
    logits = model.logits(hidden)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    present = batch.latent_from >= 0
    rows = torch.arange(inputs.shape[0], device=inputs.device).unsqueeze(-1).expand_as(batch.latent_from)
    h = hidden[rows[present], batch.latent_from[present]]
    std = model.embedding_norm()  # the embedding matrix's std: the latent head's unit
    target = compressed[rows[present], batch.latent_at[present]].detach().float() / std
    drawn = model.latent(h, std, mode="sample")["z"]
    return {"ce": ce, "embed": (drawn - target).pow(2).mean(-1).sum()}


class CompressedObjective:
    """CoLaR's SFT loss, normalised over the effective batch: CE per predicted token + `latent.embed_weight` x the
    latent head's squared error per predicted latent (and dimension). LatentObjective hands compressing variants here."""

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed

    def factor(self, record: LatentRecord, step: int) -> int:
        return compression_factor(self.seed, step, record.index, self.cfg.max_compression)

    def totals(self, records: list[LatentRecord], step: int) -> dict[str, float]:
        tokens = latents = 0
        for record in records:
            n = len(chunks([t for s in record.steps for t in s], self.factor(record, step)))
            latents += n
            tokens += n + 1 + len(record.answer)  # a token of each next chunk, <|end-latent|>, the answer and EOS
        return {"tokens": float(max(tokens, 1)), "chunks": float(max(latents, 1))}

    def loss(self, model, records: list[LatentRecord], totals: dict[str, float], step: int, device):
        inner = model.module if hasattr(model, "module") else model  # through DDP
        rows = [plan_row(inner, r, self.factor(r, step), random.Random(f"{self.seed}-{step}-{r.index}-targets")) for r in records]
        sums = model(make_compressed_batch(inner, rows, device))  # forward: compressed_loss_sums
        parts = {"ce": sums["ce"] / totals["tokens"], "embed": sums["embed"] / totals["chunks"]}
        loss = parts["ce"] + self.cfg.embed_weight * parts["embed"]
        parts = {k: v.detach() for k, v in parts.items()}
        parts["loss"] = loss.detach()
        return loss, parts
