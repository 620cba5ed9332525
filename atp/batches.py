"""Training data as tensors: tokenized sequences, the fixed batch schedule, padding, and the token loss.

The whole batch schedule is a pure function of (seed, data lengths, step count), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Example:
    """One tokenized training sequence; `labels` is IGNORE where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


def batch_schedule(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of example indices: shuffled epochs, length-grouped within chunks of 50 batches.

    Grouping by length keeps padding low; shuffling the batches keeps the order random.
    """
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} training examples are fewer than one batch of {batch_size}")
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        chunk = batch_size * 50
        epoch = []
        for start in range(0, len(order) - batch_size + 1, chunk):
            part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
            epoch += [part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
        rng.shuffle(epoch)
        batches += epoch
    return batches[:steps]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every sequence ending in the last column (prompts for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s) :] = 1
    return ids, mask


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropies over labelled positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


class TokenObjective:
    """Next-token cross-entropy on the labelled tokens, a per-token mean over the effective batch.

    An objective tells the loop two things: `totals` (the normalisers of one effective
    batch, counted before it is split) and `loss` (one micro-batch's share of the
    batch loss, plus its named parts, each already divided by those totals), so that
    summing over micro-batches and processes gives the same number however it is split.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def totals(self, items: list[Example], step: int) -> dict[str, float]:
        return {"tokens": sum(sum(1 for t in e.labels[1:] if t != IGNORE) for e in items)}

    def loss(
        self, model, items: list[Example], totals: dict[str, float], step: int, device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = {key: value.to(device) for key, value in collate(items, self.pad_id).items()}
        loss = token_loss_sum(model, batch) / totals["tokens"]
        return loss, {"loss": loss.detach()}
