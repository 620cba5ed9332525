"""The latent variants: what each latent method puts into its slots and what it trains (docs/method.md, section 5).

Plain data without torch, so that the config checks (run when Snakemake parses the workflow)
can read it without importing torch; `atp.latent` builds the modules from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """What a latent method puts into its slots and what it trains."""

    feed: str  # hidden | sample | mu | pause
    kl: bool
    decoder: bool
    stop: bool
    surplus: str  # fixed (surplus slots stay in the context) | masked (removed, the stop head learns them)
    surplus_target: str | None  # what the decoder reads from a surplus step: eos | answer | None
    project: bool = False  # the fed hidden state goes through a trained MLP + LayerNorm first (CODI's projection)
    compress: bool = False  # CoLaR: SFT on the CoT compressed r tokens to a latent, the LM head ends the latents
    distill: bool = False  # CODI's self-distillation: a teacher pass on the written CoT, its CE, and its hidden states
    # at the answer aligned with the student's (atp/latent/objective.py)

    @property
    def stochastic(self) -> bool:
        return self.feed == "sample"


VARIANTS = {
    "coconut": Variant("hidden", kl=False, decoder=False, stop=False, surplus="fixed", surplus_target=None),
    "simcot": Variant("hidden", kl=False, decoder=True, stop=False, surplus="fixed", surplus_target="answer"),
    "atp": Variant("sample", kl=True, decoder=True, stop=True, surplus="masked", surplus_target="eos"),
    "atp_no_vae": Variant("mu", kl=False, decoder=True, stop=True, surplus="masked", surplus_target="eos"),
    "atp_no_stop": Variant("sample", kl=True, decoder=True, stop=False, surplus="fixed", surplus_target="eos"),
    "codi": Variant(
        "hidden", kl=False, decoder=False, stop=False, surplus="fixed", surplus_target=None, project=True, distill=True
    ),
    "colar": Variant("sample", kl=False, decoder=False, stop=False, surplus="fixed", surplus_target=None, compress=True),
    "pause": Variant("pause", kl=False, decoder=False, stop=False, surplus="fixed", surplus_target=None),
}
