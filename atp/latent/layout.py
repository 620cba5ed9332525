"""Where a record's latent slots go at each curriculum stage, and what each is trained on.

Each slot of each row is ACTIVE (in the context), MASKED (computed, but attention mask 0: the surplus
slots of stop-head variants, and everything after a stop) or ABSENT (alignment filler for a row with
fewer slots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from atp.variants import VARIANTS, Variant

ACTIVE, MASKED, ABSENT = 1, 2, 0


@dataclass(frozen=True)
class LatentConfig:
    """Settings of the latent stage (the `latent` config section, with the method's overrides)."""

    variant: str = "atp"
    c: int = 2  # latents per reasoning step
    max_steps: int = 3  # S: at most S latent steps (c*S slots)
    beta: float = 1e-3  # weight of the KL term
    decoder_weight: float = 1.0  # weight of the step-decoder loss (the paper's is 1)
    rescale: str = "none"  # none | embedding_norm: scale each fed-back vector to the mean token-embedding norm
    scale: float = 1.0  # multiplies every fed-back vector (CoLaR's embedding-std factor)
    head_hidden: int | None = None  # width of the latent and stop heads (None: the backbone's)
    # mlp: mu = the latent head of h (the paper's); residual: mu = h + the head's correction, which starts at 0,
    # so that the Gaussian is centred on the hidden state Coconut and SIM-CoT feed back
    head: str = "mlp"
    # The latent's randomness. 0 (the paper's): z ~ N(mu, sigma^2) over all d dimensions. k > 0: a choice variable
    # c ~ N(mu_c, sigma_c^2) of k dimensions, and the latent z = m(h) + W c (m the head's mean, W learned): the policy
    # explores in k directions, so that RL's score function has k dimensions of noise instead of d.
    choice: int = 0
    # With a choice variable: a true conditional VAE. In SFT a posterior that also sees the slot's target step (the
    # mean embedding of the chosen label's step text) draws c, and the KL is between it and the latent head's prior;
    # at inference and in RL c comes from the prior, which so picks a plan.
    posterior: bool = False
    # The step decoder: a small Llama of these sizes, or, with `copy_backbone: true`, a copy of the backbone (the paper's).
    decoder: dict = field(default_factory=lambda: {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128})
    stage_steps: int = 300  # optimizer steps per curriculum stage before the last (the last gets the rest)
    stage_mix: float = 0.0  # chance that an example is drawn at a random earlier curriculum stage
    decode_tokens: int = 16  # longest step text decoded from one latent step

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown latent variant {self.variant!r} (one of {', '.join(VARIANTS)})")
        if self.c < 1 or self.max_steps < 1:
            raise ValueError("latent.c and latent.max_steps must be at least 1")
        if self.rescale not in ("none", "embedding_norm"):
            raise ValueError(f"latent.rescale must be 'none' or 'embedding_norm', not {self.rescale!r}")
        if self.head not in ("mlp", "residual"):
            raise ValueError(f"latent.head must be 'mlp' or 'residual', not {self.head!r}")
        if self.choice < 0:
            raise ValueError(f"latent.choice must be >= 0, got {self.choice}")
        if self.posterior and not (self.choice and self.spec.feed in ("sample", "mu") and self.spec.kl):
            raise ValueError("latent.posterior needs latent.choice > 0 and a variant with sampled latents and a KL (atp)")

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def decoder_copies_backbone(self) -> bool:
        """`latent.decoder.copy_backbone`: the step decoder is a copy of the backbone (absent: false, the small decoder)."""
        return bool(self.decoder.get("copy_backbone", False))

    @property
    def slots(self) -> int:
        return self.c * self.max_steps

    def stage(self, step: int) -> int:
        """Curriculum stage (latent steps) at optimizer step `step`; the last stage is max_steps."""
        if self.stage_steps <= 0:
            return self.max_steps
        return min(self.max_steps, 1 + step // self.stage_steps)


@dataclass
class LatentRecord:
    """One training problem, tokenized for every curriculum stage."""

    index: int
    prompt: list[int]  # question prompt (with BOS where the tokenizer has one), without <bot>
    steps: list[list[int]]  # each language step line, "<<a op b=c>>\n"
    step_texts: list[list[int]]  # each step for the decoder, "<<a op b=c>>" (EOS added later)
    answer: list[int]  # "### N" + EOS
    answer_text: list[int]  # "### N" (SIM-CoT's pseudo-step for surplus slots)


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
            )
        )
    return out, dropped
