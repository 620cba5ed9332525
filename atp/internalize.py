"""iCoT, stepwise internalization (Deng et al. 2024; docs/method.md, section 4.1): CoT-SFT whose chain-of-thought
tokens are removed from the front a few at a time on a schedule, until the model answers from the question alone.

At optimizer step t an example loses the first `t // every` tokens of its CoT (capped at the CoT's length), plus
with the removal smoothing a random extra o drawn with P(o) proportional to exp(-lambda * o), which lets the
model meet the next removals before the schedule reaches them. The answer line is never removed, so once the
schedule passes the longest CoT every example is the No-CoT format `### <answer><EOS>`. Both the schedule and the
offsets are pure functions of (seed, step, example), so a resumed run sees the batches the uninterrupted one saw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from atp.batches import IGNORE, Example, TokenObjective


@dataclass(frozen=True)
class CoTExample:
    """A training sequence in three parts, so that the CoT can be shortened from its front."""

    index: int  # position in the training set: the random offset's key
    prompt: list[int]
    cot: list[int]
    answer: list[int]  # the answer line and EOS

    @property
    def input_ids(self) -> list[int]:  # the full length, for the length-grouped batch schedule
        return self.prompt + self.cot + self.answer


@dataclass(frozen=True)
class RemovalSchedule:
    """How many CoT tokens an example loses at a step: `step // every` plus the smoothing offset."""

    every: int  # optimizer steps per removed token
    smoothing: float | None  # lambda of the offset's distribution; None = no offset
    seed: int = 0

    def scheduled(self, step: int) -> int:
        return step // self.every

    def offset(self, step: int, index: int) -> int:
        """The random extra removal: o >= 0 with P(o) = (1 - e^-lambda) e^(-lambda o) (the reference's truncated
        geometric distribution), drawn from a generator keyed by (seed, step, example)."""
        if self.smoothing is None:
            return 0
        u = random.Random(f"{self.seed}:{step}:{index}").random()
        # Inverse of the geometric CDF 1 - e^(-lambda (o + 1)).
        return int(math.floor(-math.log1p(-u) / self.smoothing))

    def removed(self, step: int, example: CoTExample) -> int:
        return min(len(example.cot), self.scheduled(step) + self.offset(step, example.index))

    def fully_removed_at(self, longest_cot: int) -> int:
        """The first step at which the schedule alone removes a CoT of `longest_cot` tokens."""
        return longest_cot * self.every

    def shortened(self, step: int, example: CoTExample) -> Example:
        cut = self.removed(step, example)
        target = example.cot[cut:] + example.answer
        return Example(example.prompt + target, [IGNORE] * len(example.prompt) + target)


class InternalizeObjective(TokenObjective):
    """The token loss on each example shortened by the removal schedule at the batch's step; its `removed` part is
    the share of the batch's CoT tokens removed (the curve the schedule draws)."""

    def __init__(self, pad_id: int, schedule: RemovalSchedule):
        super().__init__(pad_id)
        self.schedule = schedule

    def totals(self, items: list[CoTExample], step: int) -> dict[str, float]:
        totals = super().totals([self.schedule.shortened(step, e) for e in items], step)
        return {**totals, "cot_tokens": max(1, sum(len(e.cot) for e in items))}

    def loss(self, model, items: list[CoTExample], totals: dict[str, float], step: int, device):
        loss, parts = super().loss(model, [self.schedule.shortened(step, e) for e in items], totals, step, device)
        removed = sum(self.schedule.removed(step, e) for e in items)
        return loss, {**parts, "removed": torch.tensor(removed / totals["cot_tokens"], device=loss.device)}
