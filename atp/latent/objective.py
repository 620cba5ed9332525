"""The latent-SFT objective: one micro-batch as tensors, the loss terms' sums, and their normalisation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from atp.batches import IGNORE
from atp.config import LatentConfig
from atp.latent.layout import ABSENT, LatentRecord, Layout, layout, step_boundaries

if TYPE_CHECKING:
    from atp.latent.reasoner import LatentReasoner


@dataclass
class LatentBatch:
    """One micro-batch of latent SFT as tensors: aligned prefixes, slot states, suffixes, labels, and each row's Layout."""

    prefix: torch.Tensor  # (B, P) prompt + <bot>, left-padded
    prefix_mask: torch.Tensor  # (B, P)
    state: torch.Tensor  # (B, N) ACTIVE / MASKED / ABSENT
    suffix: torch.Tensor  # (B, T) <eot> + language steps + answer + EOS, right-padded
    suffix_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T - 1) the suffix's next tokens, IGNORE on padding
    layouts: list[Layout]
    teacher: Teacher | None = None  # CODI's teacher pass (variants with `distill`)


@dataclass
class Teacher:
    """CODI's teacher task on the same records: the written CoT, and where teacher and student are aligned."""

    ids: torch.Tensor  # (B, L) prompt + language steps + answer + EOS, right-padded
    mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L - 1) the targets' next tokens, IGNORE on the prompt and padding
    position: torch.Tensor  # (B,) the token before the answer's number in `ids`
    student_position: torch.Tensor  # (B,) the same token in the student's suffix


def make_teacher(model: LatentReasoner, records: list[LatentRecord], layouts: list[Layout], device) -> Teacher:
    """The teacher sequences of a micro-batch (padded as CoT-SFT's, atp.batches.collate); the aligned token is the
    one that predicts the answer's number."""
    from atp.batches import Example, collate

    rows = [r.prompt + [t for step in r.steps for t in step] + r.answer for r in records]
    batch = collate(
        [Example(row, [IGNORE] * len(r.prompt) + row[len(r.prompt) :]) for r, row in zip(records, rows)], model.pad_id
    )
    position = [len(row) - len(r.answer) + r.value_start - 1 for r, row in zip(records, rows)]
    student = [len(lay.suffix) - len(r.answer) + r.value_start - 1 for r, lay in zip(records, layouts)]
    return Teacher(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["labels"][:, 1:].to(device),
        torch.tensor(position, device=device),
        torch.tensor(student, device=device),
    )


def make_batch(model: LatentReasoner, records: list[LatentRecord], stages: list[int], device) -> LatentBatch:
    """Tensors of one micro-batch: aligned prefixes, slot states, suffixes and the latent targets."""
    layouts = [layout(r, k, model.cfg, model.eos_id, model.eot_id) for r, k in zip(records, stages)]
    B = len(records)
    prefix, prefix_mask = model.prefix([r.prompt for r in records])
    n_slots = max(len(lay.slot_state) for lay in layouts)
    state = torch.full((B, n_slots), ABSENT, dtype=torch.long)
    s_width = max(len(lay.suffix) for lay in layouts)
    suffix = torch.full((B, s_width), model.pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((B, s_width), dtype=torch.long)
    for b, lay in enumerate(layouts):
        state[b, : len(lay.slot_state)] = torch.tensor(lay.slot_state, dtype=torch.long)
        suffix[b, : len(lay.suffix)] = torch.tensor(lay.suffix)
        suffix_mask[b, : len(lay.suffix)] = 1
    labels = torch.where(suffix_mask.bool(), suffix, torch.full_like(suffix, IGNORE))[:, 1:]
    return LatentBatch(
        prefix.to(device),
        prefix_mask.to(device),
        state.to(device),
        suffix.to(device),
        suffix_mask.to(device),
        labels.to(device),
        layouts,
        make_teacher(model, records, layouts, device) if model.cfg.spec.distill else None,
    )


def decoder_loss_sum(model: LatentReasoner, feeds: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Summed CE of decoding each row's target text (+EOS) from its c fed-back latents (P, c, d)."""
    c, device = feeds.shape[1], feeds.device
    width = max(len(t) for t in targets)
    tgt = torch.full((len(targets), width), IGNORE, dtype=torch.long)
    inp = torch.full((len(targets), width), model.pad_id, dtype=torch.long)
    for i, t in enumerate(targets):
        tgt[i, : len(t)] = torch.tensor(t)
        inp[i, : len(t)] = torch.tensor(t)
    tgt, inp = tgt.to(device), inp.to(device)
    prefix = model.decoder_proj(feeds)
    embeds = torch.cat([prefix, model.decoder.get_input_embeddings()(inp[:, :-1])], dim=1)
    mask = torch.cat([torch.ones(len(targets), c, dtype=torch.long, device=device), (tgt[:, :-1] != IGNORE).long()], dim=1)
    logits = model.decoder(inputs_embeds=embeds, attention_mask=mask).logits[:, c - 1 :]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum")


def step_conditions(model: LatentReasoner, batch: LatentBatch) -> torch.Tensor:
    """(B, N, d) each slot's target step for the posterior of a choice variable: the mean input embedding of its
    latent step's decoder target (the chosen label's step text and EOS; EOS alone for a surplus step), detached so
    that the posterior does not move the token embeddings; zeros where a row has no slot."""
    c = model.cfg.c
    B, N = batch.state.shape
    embedding = model.backbone.get_input_embeddings().weight.detach()
    out = embedding.new_zeros((B, N, embedding.shape[1]))
    for b, lay in enumerate(batch.layouts):
        for i, target in enumerate(lay.decoder_targets):
            out[b, i * c : (i + 1) * c] = embedding[torch.tensor(target, device=embedding.device)].mean(0)
    return out


def kl_terms(run) -> torch.Tensor:
    """(B, n) KL per slot, averaged over the Gaussian's dimensions: KL(q || prior) where a posterior drew the
    latent (latent.posterior), else KL(N(mu, sigma^2) || N(0, I)) (the paper's)."""
    mu, logvar = run.mu, run.logvar
    if run.q_mu is not None:
        q_mu, q_logvar = run.q_mu, run.q_logvar
        return 0.5 * (logvar - q_logvar + (q_logvar.exp() + (q_mu - mu).pow(2)) * torch.exp(-logvar) - 1.0).mean(-1)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(-1)


def distill_sums(model: LatentReasoner, teacher: Teacher, student_states: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """CODI's teacher terms, summed over rows: the teacher's CE on the written CoT (it trains too: one model plays
    both parts), and the alignment of the student's hidden states with the teacher's, detached, at the token that
    predicts the answer's number: per layer (embeddings included) the smooth-L1 distance averaged over dimensions
    and divided by the teacher state's std, then averaged over layers. CODI divides by the std over its whole
    batch; per row here, so that the sum does not depend on how a batch is split."""
    out = model.backbone(input_ids=teacher.ids, attention_mask=teacher.mask, output_hidden_states=True)
    logits = out.logits[:, :-1]
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), teacher.labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    rows = torch.arange(teacher.ids.shape[0], device=teacher.ids.device)
    distances = []
    for t_state, s_state in zip(out.hidden_states, student_states):
        target = t_state[rows, teacher.position].detach().float()
        aligned = s_state[rows, teacher.student_position].float()
        distance = F.smooth_l1_loss(aligned, target, reduction="none").mean(-1)
        distances.append(distance / target.std(-1).clamp(min=1e-6))
    return {"teacher": ce, "distill": torch.stack(distances).mean(0).sum()}


def loss_sums(model: LatentReasoner, batch: LatentBatch) -> dict[str, torch.Tensor]:
    """Sums of each loss term over a micro-batch (the objective divides them by batch totals)."""
    spec, c = model.cfg.spec, model.cfg.c
    condition = step_conditions(model, batch) if model.cfg.posterior else None
    run = model.run_prefix_and_slots(batch.prefix, batch.prefix_mask, batch.state, condition=condition)
    sums = {}
    if spec.distill:
        logits, student_states = model.run_suffix(run, batch.suffix, batch.suffix_mask, hidden_states=True)
        sums.update(distill_sums(model, batch.teacher, student_states))
    else:
        logits = model.run_suffix(run, batch.suffix, batch.suffix_mask)
    logits = logits[:, :-1]
    sums["ce"] = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    present = batch.state != ABSENT  # (B, N): the row's own slots, real or surplus
    if spec.kl and run.mu is not None:
        sums["kl"] = (kl_terms(run) * present).sum()
    if spec.decoder:
        feeds = run.feed  # (B, N, d)
        rows, targets = [], []
        for b, lay in enumerate(batch.layouts):
            for i, target in enumerate(lay.decoder_targets):
                rows.append(feeds[b, i * c : (i + 1) * c])
                targets.append(target)
        sums["dec"] = decoder_loss_sum(model, torch.stack(rows), targets) if rows else feeds.sum() * 0
    if spec.stop:
        logits_stop, labels = [], []
        firsts = step_boundaries(run.slots_run, c).nonzero().squeeze(-1).tolist()  # the slot of each latent step's decision
        for b, lay in enumerate(batch.layouts):
            for i, label in enumerate(lay.stop_labels):
                logits_stop.append(run.stop_logits[b, firsts[i]])
                labels.append(label)
        if logits_stop:
            sums["stop"] = F.cross_entropy(
                torch.stack(logits_stop).float(), torch.tensor(labels, device=logits.device), reduction="sum"
            )
        else:
            sums["stop"] = logits.sum() * 0
    return sums


class LatentObjective:
    """The latent-SFT loss of docs/method.md, section 5, normalised over the effective batch.

    CE per target token + beta * KL per latent dimension + decoder_weight * decoder CE
    per latent step (summed over its tokens) + stop CE per step boundary. The curriculum stage comes
    from the optimizer step; `stage_mix` draws some examples at an earlier stage.
    """

    def __init__(self, cfg: LatentConfig, seed: int, eos_id: int, eot_id: int):
        from atp.latent.compress import CompressedObjective

        self.cfg, self.seed, self.eos_id, self.eot_id = cfg, seed, eos_id, eot_id
        # CoLaR trains in one teacher-forced pass over compressed CoT instead (atp/latent/compress.py).
        self.compressed = CompressedObjective(cfg, seed) if cfg.spec.compress else None

    def stages(self, records: list[LatentRecord], step: int) -> list[int]:
        stage = self.cfg.stage(step)
        out = []
        for r in records:
            k = stage
            if self.cfg.stage_mix > 0 and stage > 1:
                rng = random.Random(f"{self.seed}-{step}-{r.index}")
                if rng.random() < self.cfg.stage_mix:
                    k = rng.randint(1, stage - 1)
            out.append(k)
        return out

    def totals(self, records: list[LatentRecord], step: int) -> dict[str, float]:
        if self.compressed is not None:
            return self.compressed.totals(records, step)
        spec = self.cfg.spec
        t = {"tokens": 0.0, "latents": 0.0, "dec_steps": 0.0, "stops": 0.0, "rows": float(len(records)), "teacher_tokens": 0.0}
        for r, k in zip(records, self.stages(records, step)):
            lay = layout(r, k, self.cfg, self.eos_id, self.eot_id)
            t["tokens"] += len(lay.suffix) - 1
            t["teacher_tokens"] += sum(map(len, r.steps)) + len(r.answer) if spec.distill else 0
            t["latents"] += len(lay.slot_state)
            t["dec_steps"] += len(lay.decoder_targets) if spec.decoder else 0
            t["stops"] += len(lay.stop_labels) if spec.stop else 0
        return {k: max(v, 1.0) for k, v in t.items()}

    def loss(self, model, records: list[LatentRecord], totals: dict[str, float], step: int, device):
        if self.compressed is not None:
            return self.compressed.loss(model, records, totals, step, device)
        inner = model.module if hasattr(model, "module") else model  # through DDP
        batch = make_batch(inner, records, self.stages(records, step), device)
        sums = model(batch)  # forward: loss_sums
        parts = {"ce": sums["ce"] / totals["tokens"]}
        loss = parts["ce"]
        if "kl" in sums:
            parts["kl"] = sums["kl"] / totals["latents"]
            loss = loss + self.cfg.beta * parts["kl"]
        if "dec" in sums:
            parts["dec"] = sums["dec"] / totals["dec_steps"]
            loss = loss + self.cfg.decoder_weight * parts["dec"]
        if "distill" in sums:  # CODI: the teacher's CE per target token, the alignment per row
            parts["teacher"] = sums["teacher"] / totals["teacher_tokens"]
            parts["distill"] = sums["distill"] / totals["rows"]
            loss = loss + self.cfg.teacher_weight * parts["teacher"] + self.cfg.distill_weight * parts["distill"]
        if "stop" in sums:
            parts["stop"] = sums["stop"] / totals["stops"]
            loss = loss + parts["stop"]
            # Share of the step boundaries labelled "stop" (logged): zero all run long would mean an RL start
            # whose stop head never saw a positive label.
            stops = sum(sum(lay.stop_labels) for lay in batch.layouts)
            parts["stop_share"] = torch.tensor(stops / totals["stops"], device=loss.device)
        parts = {k: v.detach() for k, v in parts.items()}
        parts["loss"] = loss.detach()
        return loss, parts
