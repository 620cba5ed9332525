"""Settings of the RL stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RLConfig:
    """Settings of the RL stage (the `rl` config section; optimiser settings come from `train`)."""

    questions: int = 8  # questions per RL step (the paper: 16)
    group_size: int = 8  # G trajectories per question (the paper: 8)
    minibatch_size: int = 16  # trajectories per optimizer step; one pass over the rollouts (the paper: 16)
    epochs: int = 1  # passes over one step's rollouts
    # Dynamic sampling (DAPO): roll out `oversample` x `questions` questions' groups a step and update on `questions`
    # of them, those whose rewards differ first (a group whose rewards are all equal has no advantage); 1 = off (the paper).
    oversample: int = 1
    clip_eps: float = 0.2
    log_ratio_clamp: float = 3.0
    kl_coef: float = 0.0  # KL to the frozen starting policy (k3 estimator per action); 0 = off, as the paper
    temperature: float = 1.0  # answer-token sampling
    # Latent exploration: rollouts draw z ~ N(mu, (T sigma)^2) and score it under that same Gaussian. The SFT
    # model learns to ignore its own noise (sampled and mu accuracy are equal), so T > 1 explores where it matters.
    latent_temperature: float = 1.0
    max_answer_tokens: int = 16
    max_cot_tokens: int = 96  # a token policy's completion (its written CoT and answer), EOS included
    trajectories_every: int = 25  # RL steps between trajectory artifacts
    trajectories_logged: int = 16  # trajectories written each time
    # sequence: per-trajectory means of the latent and answer terms, summed (the paper) | action: one mean over all actions
    loss: str = "sequence"
    latent_logp: str = "sum"  # sum: a latent's Gaussian log-density summed over dimensions (the paper) | mean: averaged (CoLaR)
    latent_weight: float = 1.0  # weight of the latent actions in the loss (stop decisions and answer tokens keep 1)
    # Weight of the answer tokens in the loss. 0 gives all the credit to the latents and stop decisions: when the answer
    # is the chain's read-out, a wrong answer's negative advantage otherwise teaches the read-out to leave the chain.
    answer_weight: float = 1.0
    frozen: bool = (
        False  # roll out and score on the same schedule without updating: the control the reward curves are read against
    )
    # Validation at the end: samples per question for pass@k, vote@k and the share of all-right-or-all-wrong groups
    # (atp.evaluate.pass_at_k), what says whether sampling leaves RL anything to learn from; 0 = off.
    pass_k: int = 8
    diagnostics_every: int = 10  # RL steps between gradient diagnostics (per-action-type norms, two-half cosine); 0 = off
    rewards: dict | None = None  # RewardConfig fields

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be at least 2 (a group-normalised advantage needs two rollouts), got {self.group_size}"
            )
        if self.pass_k == 1 or self.pass_k < 0:
            raise ValueError(f"pass_k must be 0 (off) or at least 2, got {self.pass_k}")
        if self.questions < 1 or self.minibatch_size < 1 or self.epochs < 1 or self.oversample < 1:
            raise ValueError("questions, minibatch_size, epochs and oversample must be at least 1")
        if (self.questions * self.group_size) % self.minibatch_size:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} does not divide questions x group_size = "
                f"{self.questions * self.group_size}"
            )
        if self.temperature <= 0 or self.latent_temperature <= 0:
            raise ValueError(f"temperature and latent_temperature must be > 0, got {self.temperature}, {self.latent_temperature}")
        if self.loss not in ("sequence", "action"):
            raise ValueError(f"loss must be 'sequence' or 'action', not {self.loss!r}")
        if self.latent_logp not in ("sum", "mean"):
            raise ValueError(f"latent_logp must be 'sum' or 'mean', not {self.latent_logp!r}")
        if self.latent_weight < 0 or self.answer_weight < 0:
            raise ValueError(f"latent_weight and answer_weight must be >= 0, got {self.latent_weight}, {self.answer_weight}")

    @property
    def rollouts(self) -> int:
        """Trajectories an update pass sees a step (dynamic sampling rolls out `oversample` times as many)."""
        return self.questions * self.group_size

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.rollouts // self.minibatch_size
