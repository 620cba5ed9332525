"""The RL stage's step: rollouts, rewards, advantages and updates (grpo_step), and the task the training loop runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from atp.config import RLConfig
from atp.latent import LatentReasoner
from atp.rl.loss import gradient_diagnostics, group_advantages, uniform_groups
from atp.rl.policy import replay, rollout
from atp.rl.update import ppo_update

if TYPE_CHECKING:
    from atp.rewards import RewardConfig


def rl_settings(config: dict) -> tuple[RLConfig, RewardConfig]:
    """(RLConfig, RewardConfig) of a job config's `rl` section."""
    from atp.config import to_dataclass
    from atp.rewards import RewardConfig

    rl_cfg = to_dataclass(RLConfig, config["rl"], "rl")
    return rl_cfg, to_dataclass(RewardConfig, rl_cfg.rewards or {}, "rl.rewards")


def freeze_decoder(model: LatentReasoner) -> LatentReasoner:
    """RL trains the backbone, the latent head and the stop head; the step decoder (and its projection) stays as SFT left it."""
    for name, param in model.named_parameters():
        if name.startswith(("decoder.", "decoder_proj.")):
            param.requires_grad_(False)
    return model


def reference_policy(model: LatentReasoner) -> LatentReasoner:
    """A frozen copy of the policy for the KL penalty (`kl_coef > 0`): what replay runs (backbone, latent and stop
    heads), without the step decoder, which replay never runs and which can be a whole second backbone
    (`decoder_copies_backbone`, the paper's setting)."""
    import copy

    # The decoder's entry in deepcopy's memo makes the copy hold None in its place; the policy is left untouched.
    decoder = getattr(model, "decoder", None)
    memo = {} if decoder is None else {id(decoder): None}
    return copy.deepcopy(model, memo).eval().requires_grad_(False)


def check_world(cfg: RLConfig, world_size: int) -> None:
    """N processes share each step's questions (whole groups) and each minibatch evenly, or the run is refused."""
    from atp.config import ConfigError

    if cfg.questions % world_size:
        raise ConfigError(
            f"config key 'rl.questions': {cfg.questions} questions per RL step do not divide among {world_size} processes "
            f"(each process rolls out whole groups); use a multiple of {world_size}"
        )
    if cfg.minibatch_size % world_size:
        raise ConfigError(
            f"config key 'rl.minibatch_size': {cfg.minibatch_size} trajectories per update do not divide among "
            f"{world_size} processes; "
            f"use a multiple of {world_size}"
        )


def grpo_step(
    model,
    optimizer,
    trainable,
    prompts,
    answers,
    rl_cfg: RLConfig,
    reward_cfg,
    tokenizer,
    generator,
    grad_clip: float,
    ref=None,
    dist=None,
    bf16: bool = False,
    diagnose: bool = False,
    gold_steps: list[list[str]] | None = None,
) -> tuple[dict, list[dict]]:
    """One RL step: rollouts, rewards, group advantages, one pass of PPO-clip updates. Returns (metrics, trajectories).

    `model` is a LatentReasoner (GRPO over latents) or an atp.rl.tokens.TokenPolicy (token GRPO on written CoT,
    whose coherence reward reads the steps it wrote).

    `prompts` and `answers` are this process's rows (whole groups). With `dist` of N processes the update
    is synchronised (see ppo_update) and the metrics and trajectories are those of all processes'
    rows, in rank order (every process returns the same). `bf16`: autocast for rollouts and replays.
    `diagnose`: also measure the gradient per action type and its two-half cosine (gradient_diagnostics,
    on this process's rows) before the update. With `rl_cfg.frozen` nothing is updated. `gold_steps` (the
    rows' gold CoT) lets the metrics count the distinct *valid* chains of a group (atp.evaluate.step_fidelity).
    With `rl_cfg.oversample` > 1 the rows hold that many times `questions` groups; the update uses `questions`
    of them (kept_rows) and the metrics describe all.
    """
    import statistics

    from atp.rewards import correct, total
    from atp.rl.policy import is_token_policy
    from atp.text import extract_steps

    token_policy = is_token_policy(model)
    world_size, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.eval()  # no dropout anywhere; eval only makes sampling and replay see the same network
    with autocast:
        traj = rollout(model, prompts, rl_cfg, generator)
        used = traj.latents_used.tolist()
        if not token_policy:
            steps = model.decode_steps([traj.feeds[b, :n].float().cpu() for b, n in enumerate(used)], tokenizer)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in traj.answer_ids(model.eos_id)]
    if token_policy:  # the coherence reward reads the steps the policy wrote
        steps = [extract_steps(text) for text in completions]
    # A latent policy without a step decoder (CoLaR) has no chains to count: its chain diagnostics stay absent.
    chains = token_policy or model.cfg.spec.decoder
    rewards = total(completions, answers if reward_cfg.needs_gold else None, steps, reward_cfg)
    accuracy = rewards["correct"] if reward_cfg.needs_gold else correct(completions, answers=answers)  # monitoring only here
    # Groups are whole on each process, so the advantages need nothing from the other processes.
    advantages = group_advantages(torch.tensor(rewards["total"]), rl_cfg.group_size).to(traj.device)
    answer_tokens, noise_ratio = traj.masks["answer"].sum(-1).tolist(), traj.noise_ratio
    kept = kept_rows(rewards["total"], rl_cfg.group_size, len(prompts) // (rl_cfg.group_size * rl_cfg.oversample))
    row_advantages = advantages
    if len(kept) < len(prompts):  # dynamic sampling: the update sees the kept groups only
        traj, advantages = traj.rows(kept), advantages[torch.tensor(kept, device=advantages.device)]
    with autocast, torch.no_grad():
        # The log-probabilities the ratios start from come from the replay path itself (TRL computes its old
        # log-probabilities the same way): the sampling loop decodes token by token, the replay in one pass, and
        # their roundings differ (4.8e-7 in fp32 on the tiny test policy, more under bf16 on a GPU), so the first
        # minibatch's ratio is exactly 1 and nothing is clipped before an update.
        traj.old = {k: v.detach() for k, v in replay(model, traj, rl_cfg).items()}
    ref_logps = None
    if ref is not None and rl_cfg.kl_coef > 0:
        with torch.no_grad(), autocast:
            ref_logps = {k: v.detach() for k, v in replay(ref, traj, rl_cfg).items()}
    diagnostics = gradient_diagnostics(model, trainable, traj, advantages, rl_cfg, autocast) if diagnose else {}
    stats = (
        {}
        if rl_cfg.frozen
        else ppo_update(
            model, optimizer, trainable, traj, advantages, rl_cfg, generator, grad_clip, ref_logps, world_size, autocast
        )
    )
    R = len(prompts)
    mine = {
        "rewards": rewards,
        "accuracy": list(accuracy),
        "used": used,
        "answer_tokens": answer_tokens,
        "kept": [b in set(kept) for b in range(len(prompts))],
        "trajectories": [
            {
                "question_row": rank * R + b,
                "latents": used[b],
                "latent_steps": steps[b] if chains else None,
                "completion": completions[b],
                "gold": answers[b],
                **{f"reward_{k}": v[b] for k, v in rewards.items()},
                "advantage": round(float(row_advantages[b]), 6),
                **({} if gold_steps is None or not chains else {"valid_chain": valid_chain(steps[b], gold_steps[b])}),
                **({} if noise_ratio is None else {"noise_over_mu": round(float(noise_ratio[b]), 6)}),
            }
            for b in range(R)
        ],
    }
    metrics, trajectories = step_metrics(mine, world_size, rl_cfg.group_size)
    metrics.update({f"rl/{k}": statistics.fmean(v) for k, v in stats.items() if v})
    metrics.update(diagnostics)
    return metrics, trajectories


def bf16_first_step(model: LatentReasoner, tokenizer, questions: list[str], device, seed: int = 0) -> dict[str, float]:
    """One bf16 GRPO step of an ATP-Latent reasoner given a trained head's sigma (logvar near -8, sigma 0.018): four
    questions x 4 rollouts replayed in minibatches of 4, so that the old and the new log-probabilities come from
    passes over different batch compositions. With so small a sigma, a bf16 rounding of mu between the two would
    move the log-density by many nats; the step's `rl/first_clip_fraction` and `rl/first_max_abs_log_ratio` say
    whether it does. The check of tests/test_bf16.py and scripts/device_check.py (on a GPU)."""
    from atp.modeling import prompt_ids
    from atp.rewards import RewardConfig

    with torch.no_grad():
        model.logvar_head.weight.mul_(0.01)
        model.logvar_head.bias.fill_(-8.0)
    policy = freeze_decoder(model.to(device))
    prompts = [prompt_ids(tokenizer, q) for q in questions[:4] for _ in range(4)]
    rl = RLConfig(questions=4, group_size=4, minibatch_size=4, max_answer_tokens=4)
    rewards = RewardConfig(correct=0.0, format=0.5, coherence=1.0, coherence_times_correct=False)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    metrics, _ = grpo_step(
        policy, optimizer, trainable, prompts, ["1"] * len(prompts), rl, rewards, tokenizer, generator, 1.0, bf16=True
    )
    return metrics


def kept_rows(rewards: list[float], group_size: int, groups: int) -> list[int]:
    """The rows of the `groups` groups an update uses (dynamic sampling): groups whose rewards differ first, then
    groups whose rewards are all equal, each in rollout order; all rows when there are only `groups` groups.

    >>> kept_rows([1, 1, 0, 1, 0, 0, 1, 0], group_size=2, groups=2)
    [2, 3, 6, 7]
    >>> kept_rows([1, 1, 0, 0, 1, 0], group_size=2, groups=2)
    [0, 1, 4, 5]
    """
    uniform = uniform_groups(rewards, group_size).tolist()
    order = [g for g, u in enumerate(uniform) if not u] + [g for g, u in enumerate(uniform) if u]
    return [g * group_size + i for g in sorted(order[:groups]) for i in range(group_size)]


def valid_chain(steps: list[str], gold: list[str]) -> bool:
    """A chain is valid when it has steps and each is true and yields an intermediate result of the gold CoT: one
    of the problem's equivalent labels (another order of the same sub-results) or the label itself."""
    from atp.evaluate import step_fidelity

    return bool(steps) and all(step_fidelity(s, gold) for s in steps)


def diversity_metrics(trajectories: list[dict], group_size: int) -> dict[str, float]:
    """How much a step's groups differ inside (what GRPO can tell apart): distinct chains (decoded latent steps or
    written steps; absent where a policy decodes none, `latent_steps` None), distinct answers and, where the gold CoT
    was given, distinct valid chains per group; the latent noise's norm over the norm of mu, where the policy has
    latents."""
    import statistics

    from atp.text import parse_answer

    groups = [trajectories[i : i + group_size] for i in range(0, len(trajectories), group_size)]
    out = {"rl/distinct_answers": statistics.fmean(len({parse_answer(t["completion"]) for t in g}) for g in groups)}
    if all(t["latent_steps"] is not None for t in trajectories):
        out["rl/distinct_chains"] = statistics.fmean(len({tuple(t["latent_steps"]) for t in g}) for g in groups)
    if all("valid_chain" in t for t in trajectories):
        out["rl/distinct_valid_chains"] = statistics.fmean(
            len({tuple(t["latent_steps"]) for t in g if t["valid_chain"]}) for g in groups
        )
    if all("noise_over_mu" in t for t in trajectories):
        out["rl/noise_over_mu"] = statistics.fmean(t["noise_over_mu"] for t in trajectories)
    return out


def step_metrics(mine: dict, world_size: int, group_size: int) -> tuple[dict[str, float], list[dict]]:
    """A step's reward and rollout metrics over every process's rows (gathered in rank order), and its trajectories."""
    import statistics

    parts = [mine]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, mine)
    rewards = {k: [v for p in parts for v in p["rewards"][k]] for k in mine["rewards"]}
    gathered = {key: [v for p in parts for v in p[key]] for key in ("accuracy", "used", "answer_tokens", "kept", "trajectories")}
    groups = torch.tensor(rewards["total"]).view(-1, group_size)
    uniform = uniform_groups(rewards["total"], group_size)
    kept = torch.tensor(gathered["kept"]).view(-1, group_size)[:, 0]
    metrics = {f"rewards/{k}/mean": statistics.fmean(v) for k, v in rewards.items()}
    metrics.update(
        {
            "rewards/total/group_std": float(groups.std(-1).mean()),
            "rl/accuracy": statistics.fmean(gathered["accuracy"]),
            "rl/latents": statistics.fmean(gathered["used"]),
            "rl/answer_tokens": statistics.fmean(gathered["answer_tokens"]),
            "rl/zero_advantage_groups": float(uniform.float().mean()),
            # the share of the groups an update used whose rewards differ (dynamic sampling raises it)
            "rl/informative_groups": float((~uniform[kept]).float().mean()),
            **diversity_metrics(gathered["trajectories"], group_size),
        }
    )
    return metrics, gathered["trajectories"]


class GRPOTask:
    """The RL stage as atp.train.run_loop runs it: each step draws `rl.questions` x `rl.oversample` questions (a fixed
    schedule, equal lengths: drawn at random, not grouped by length, which would group them by difficulty),
    repeats each `rl.group_size` times, gives this process its whole groups and takes one `grpo_step` with a
    generator of (seed, step, rank). Every step is logged; the run's metrics are the mean of its last
    `train.log_every` steps; every `rl.trajectories_every` steps process 0 writes sampled trajectories."""

    desc = "rl"
    log_every = 1

    def __init__(
        self,
        model,
        optimizer,
        trainable: list,
        records: list[dict],
        prompts: list[list[int]],
        rl_cfg: RLConfig,
        reward_cfg,
        tokenizer,
        train_cfg,
        seed: int,
        dist,
        ref,
        tracker,
        traj_dir,
    ):
        from atp.batches import batch_schedule

        self.model, self.optimizer, self.trainable, self.records, self.prompts = model, optimizer, trainable, records, prompts
        self.rl_cfg, self.reward_cfg, self.tokenizer, self.train_cfg = rl_cfg, reward_cfg, tokenizer, train_cfg
        self.seed, self.dist, self.ref, self.tracker, self.traj_dir = seed, dist, ref, tracker, traj_dir
        self.schedule = batch_schedule([0] * len(prompts), rl_cfg.questions * rl_cfg.oversample, train_cfg.steps, seed)
        self.summary_window = train_cfg.log_every
        self.rows: list[int] = []
        self.trajectories: list[dict] = []

    def step(self, step: int) -> dict[str, float]:
        import time

        from atp.train import step_generator

        cfg, dist = self.rl_cfg, self.dist
        self.rows = [i for i in self.schedule[step] for _ in range(cfg.group_size)]
        share = len(self.rows) // dist.world_size  # this process's rows: whole groups
        mine = self.rows[dist.rank * share : (dist.rank + 1) * share]
        started = time.time()
        metrics, self.trajectories = grpo_step(
            self.model,
            self.optimizer,
            self.trainable,
            [self.prompts[i] for i in mine],
            [self.records[i]["answer"] for i in mine],
            cfg,
            self.reward_cfg,
            self.tokenizer,
            step_generator(self.seed, step, dist.rank, dist.device),
            self.train_cfg.grad_clip,
            self.ref,
            dist,
            self.train_cfg.bf16,
            diagnose=bool(cfg.diagnostics_every) and step % cfg.diagnostics_every == 0,
            gold_steps=[self.records[i]["steps"] for i in mine],
        )
        metrics["rl/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["rl/step_seconds"] = time.time() - started
        return metrics

    def window_metrics(self, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
        return window[-1]  # one step per log point

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{metrics['rewards/total/mean']:.3f}", "acc": f"{metrics['rl/accuracy']:.2f}"}

    def on_log(self, done: int, metrics: dict[str, float]) -> None:
        from atp.data.records import write_jsonl

        if self.dist.is_main and (done % self.rl_cfg.trajectories_every == 0 or done == self.train_cfg.steps):
            for t in self.trajectories:
                t["question"] = self.records[self.rows[t["question_row"]]]["question"]
            path = self.traj_dir / f"step_{done:06d}.jsonl"
            write_jsonl(path, self.trajectories[: self.rl_cfg.trajectories_logged])
            self.tracker.log_artifact(path, "trajectories")

    def summary(self, logged: list[dict[str, float]]) -> dict[str, float]:
        import statistics

        keys = sorted({k for m in logged for k in m if not k.endswith("seconds")})  # diagnostics come every few steps only
        return {f"train/{k.removeprefix('rl/')}": statistics.fmean(m[k] for m in logged if k in m) for k in keys}
