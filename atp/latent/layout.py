"""Where a record's latent slots go at each curriculum stage, and what each is trained on.

Each slot of each row is ACTIVE (in the context), MASKED (computed, but attention mask 0: the surplus
slots of stop-head variants, and everything after a stop) or ABSENT (alignment filler for a row with
fewer slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atp.config import LatentConfig

ACTIVE, MASKED, ABSENT = 1, 2, 0


@dataclass
class LatentRecord:
    """One training problem, tokenized for every curriculum stage."""

    index: int
    prompt: list[int]  # question prompt (with BOS where the tokenizer has one), without <bot>
    steps: list[list[int]]  # each language step line, "<<a op b=c>>\n"
    step_texts: list[list[int]]  # each step for the decoder, "<<a op b=c>>" (EOS added later)
    answer: list[int]  # "### N" + EOS
    answer_text: list[int]  # "### N" (SIM-CoT's pseudo-step for surplus slots)
    value_start: int = 1  # index in `answer` of the number's first token (CODI aligns the token before it)


@dataclass
class Layout:
    """Where one record's slots go at one curriculum stage, and what each is trained on."""

    slot_state: list[int]  # ACTIVE or MASKED per slot (length c * latent steps)
    suffix: list[int]  # <eot> + remaining language steps + answer + EOS
    decoder_targets: list[list[int]]  # per latent step (real, then surplus): text ids + EOS
    stop_labels: list[int]  # per latent step: 1 beyond the real steps


def step_boundaries(slots: int, c: int, device=None) -> torch.Tensor:
    """(slots,) True at the first slot of each latent step (every c-th): where the stop head decides, where a
    stop label is taken, where a row may stop."""
    boundary = torch.zeros(slots, dtype=torch.bool, device=device)
    boundary[::c] = True
    return boundary


def layout(record: LatentRecord, stage: int, cfg: LatentConfig, eos: int, eot: int) -> Layout:
    """Stage k makes the first k steps latent and gives every record c*k slots (c*S at the last stage).

    A record with fewer than k steps gets surplus slots past its real steps, at every stage and not
    only the last (the paper's and Coconut's data code): fixed-budget variants keep them in the
    context, stop-head variants mask them, label them "stop" and decode them to EOS. So the stop head
    sees positive labels from stage 2 on, and an RL start at a middle stage has a trained stop head.
    """
    spec, S, c = cfg.spec, cfg.max_steps, cfg.c
    n = len(record.steps)
    final = stage >= S
    latent_steps = min(stage, S)
    real = min(latent_steps, n)
    language = [] if final else record.steps[real:]
    surplus = latent_steps - real
    targets = [list(t) for t in record.step_texts[:real]]
    if final and n > S:  # steps beyond the S-th are joined into the S-th decoder target
        targets[-1] = [tok for t in record.step_texts[S - 1 :] for tok in t]
    targets = [t + [eos] for t in targets]
    if spec.surplus_target == "answer":
        targets += [record.answer_text + [eos]] * surplus
    else:
        targets += [[eos]] * surplus
    surplus_state = ACTIVE if spec.surplus == "fixed" else MASKED
    return Layout(
        slot_state=[ACTIVE] * (c * real) + [surplus_state] * (c * surplus),
        suffix=[eot] + [tok for s in language for tok in s] + record.answer,
        decoder_targets=targets,
        stop_labels=[0] * real + [1] * surplus,
    )


def encode_latent_records(records: list[dict], tokenizer, max_length: int, cfg: LatentConfig) -> tuple[list[LatentRecord], int]:
    """Tokenize contract records for the latent stage; records without steps or too long are dropped."""
    from atp.modeling import prompt_ids
    from atp.text import answer_text

    out, dropped = [], 0
    for i, r in enumerate(records):
        prompt = prompt_ids(tokenizer, r["question"])
        steps = [tokenizer.encode(s + "\n", add_special_tokens=False) for s in r["steps"]]
        answer = tokenizer.encode(answer_text(r["answer"]), add_special_tokens=False)
        # The answer's first number token (a tokenizer without digits, say a word-level one: the line's last token).
        digits = (i for i in range(len(answer)) if any(ch.isdigit() for ch in tokenizer.decode(answer[: i + 1])))
        value_start = next(digits, max(len(answer) - 1, 0))
        if not steps or len(prompt) + 2 + cfg.slots + sum(map(len, steps)) + len(answer) + 1 > max_length:
            dropped += 1
            continue
        out.append(
            LatentRecord(
                index=i,
                prompt=prompt,
                steps=steps,
                step_texts=[tokenizer.encode(s, add_special_tokens=False) for s in r["steps"]],
                answer=answer + [tokenizer.eos_token_id],
                answer_text=answer,
                value_start=value_start,
            )
        )
    return out, dropped
