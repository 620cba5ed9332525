"""Rewards of the RL stage (docs/method.md, section 6): pure functions, registered by name.

Each reward is `fn(completions, **columns) -> list[float]`, one value per
completion (TRL's convention): `completions` are the answer texts decoded after
the latents, `answers` the gold answers and `steps` each completion's latent
steps decoded by the frozen step decoder. `total` weighs them as the config says:

    w_correct * correct + w_format * format + w_coherence * coherence [* correct]

(the paper: 1, 0.5, 0.1, the coherence term gated by correctness; the
coherence-only variant: 0, 0.5, 1, ungated, so that no gold answer is read).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from atp.config import RewardConfig  # noqa: F401  (the `rl.rewards` section, with the other config classes)
from atp.text import ANSWER_MARKER, numbers_equal, parse_answer, parse_equation

REWARDS: dict[str, Callable[..., list[float]]] = {}
_FORMAT = re.compile(re.escape(ANSWER_MARKER) + r"\s*-?[\d.,]*\d")


def register(name: str):
    """Add a reward function to REWARDS under `name`."""

    def wrap(fn):
        REWARDS[name] = fn
        return fn

    return wrap


@register("correct")
def correct(completions: list[str], answers: list[str], **_) -> list[float]:
    """1 when the number after the answer marker equals the gold answer by value.

    >>> correct(["### 12", "### 12.0", "### 1", "12"], answers=["12"] * 4)
    [1.0, 1.0, 0.0, 0.0]
    """
    out = []
    for text, gold in zip(completions, answers):
        predicted = parse_answer(text)
        out.append(float(predicted is not None and numbers_equal(predicted, str(gold))))
    return out


@register("format")
def format_reward(completions: list[str], **_) -> list[float]:
    """1 when the answer marker is present and a number follows it.

    >>> format_reward(["### 7", "###", "7", "### x"])
    [1.0, 0.0, 0.0, 0.0]
    """
    return [float(_FORMAT.search(text) is not None) for text in completions]


def _raw_result(step: str) -> str | None:
    """The paper's reading of a step's result: the raw text after `=` and before `>>`."""
    if "=" not in step:
        return None
    return step.split("=", 1)[1].split(">>", 1)[0].strip()


def step_coherence(steps: list[str], answer: str | None, rule: str = "strict") -> float:
    """Share of latent steps whose result is used later (docs/method.md, section 6); 1 without steps.

    strict (default): a step is an equation as `atp.text.parse_equation` reads it (any number of
    operands and parentheses; a truncated or wrapped step is not one, and is incoherent); its result is
    used when it equals, by value, an operand of a later step, and the last step's when it equals the
    final answer. `substring` (the paper's code): a result is used when it occurs as a raw substring of a
    later step, and the last step's when it occurs in the predicted answer's text; a step without `=`
    counts as coherent.

    >>> step_coherence(["<<2+3=5>>", "<<5*2=10>>"], "10")
    1.0
    >>> step_coherence(["<<2*3=1>>", "<<12+1=13>>"], "13", rule="strict")  # "1" is not "12"
    1.0
    >>> step_coherence(["<<2+3=1>>", "<<12+2=14>>"], "14", rule="substring")  # but is a substring of it
    1.0
    >>> step_coherence(["<<2*3=7>>"], "17", rule="substring"), step_coherence(["<<2*3=7>>"], "17")
    (1.0, 0.0)
    """
    if not steps:
        return 1.0
    if rule not in ("strict", "substring"):
        raise ValueError(f"unknown coherence rule {rule!r} (strict or substring)")
    used = 0
    for i, step in enumerate(steps):
        later = steps[i + 1 :]
        if rule == "strict":
            equation = parse_equation(step)
            if equation is None:
                continue
            if later:
                operands = [n for s in later if (e := parse_equation(s)) is not None for n in e.operands]
                used += any(numbers_equal(equation.result, n) for n in operands)
            else:
                used += answer is not None and numbers_equal(equation.result, answer)
        else:
            result = _raw_result(step)
            if result is None or result == "":
                used += 1
            elif later:
                used += any(result in s for s in later)
            else:
                used += answer is not None and result in answer
    return used / len(steps)


@register("coherence")
def coherence(completions: list[str], steps: list[list[str]], rule: str = "strict", **_) -> list[float]:
    """`step_coherence` of each completion's decoded latent steps, its final answer parsed from the completion.

    >>> coherence(["### 10", "### 9"], steps=[["<<2+3=5>>", "<<5*2=10>>"]] * 2)
    [1.0, 0.5]
    """
    return [step_coherence(s, parse_answer(text), rule) for text, s in zip(completions, steps)]


def total(completions: list[str], answers: list[str] | None, steps: list[list[str]], cfg: RewardConfig) -> dict[str, list[float]]:
    """Every component and the weighted total, per completion (gold answers are not read when not needed).

    >>> r = total(["### 10"], ["10"], [["<<2+3=5>>", "<<5*2=10>>"]], RewardConfig())
    >>> r["total"]
    [1.6]
    """
    n = len(completions)
    parts = {
        "correct": REWARDS["correct"](completions, answers=answers) if answers is not None else [0.0] * n,
        "format": REWARDS["format"](completions),
        "coherence": REWARDS["coherence"](completions, steps=steps, rule=cfg.coherence_rule),
    }
    if cfg.needs_gold and answers is None:
        raise ValueError("these reward weights read the gold answers, but none were given")
    values = []
    for k in range(n):
        coherent = parts["coherence"][k] * (parts["correct"][k] if cfg.coherence_times_correct else 1.0)
        values.append(round(cfg.correct * parts["correct"][k] + cfg.format * parts["format"][k] + cfg.coherence * coherent, 10))
    return {**parts, "total": values}
