"""RL with the coherence reward: GRPO over latent trajectories (method.md section 6).

    python -m atp.stages.rl --config job.yaml --method atp_rl --seed 0 \
        --data-dir results/<exp>/data --out-dir results/<exp>/train/atp_rl/seed0 \
        --init results/<exp>/train/atp/seed0/model [--checkpoint-dir <dir>]

Each RL step draws `rl.questions` training questions, samples `rl.group_size`
trajectories for each (latents, stop decisions, answer), scores them with the
rewards of `rl.rewards`, normalises the rewards within each group, and takes
one pass of PPO-clip updates over the rollouts in minibatches of
`rl.minibatch_size`. The backbone, latent head and stop head train (LoRA on the
backbone if `model.lora.enabled`); the step decoder is frozen. Optimiser settings
(`steps` = RL steps, lr, schedule, clipping, checkpoints, bf16 autocast) come from `train`.

Runs unchanged on one process or under torchrun / accelerate launch on N: each
process rolls out `rl.questions / N` whole groups of every step (with its own
generator, from seed, step and rank), the rewards and advantages stay within
groups, and every update of `rl.minibatch_size` trajectories (N x minibatch_size / N)
is normalised over the global minibatch's actions and has its gradients summed
over processes, so it is the update one process would make on those rows. The
metrics are over all processes' rows; process 0 alone writes files, checkpoints
and MLflow. `rl.questions` and `rl.minibatch_size` must be multiples of N.

Writes <out-dir>/model/, <out-dir>/metrics.json, <out-dir>/history.jsonl (one line
per RL step) and <out-dir>/trajectories/step_*.jsonl (sampled trajectories with
their decoded latent steps, also MLflow artifacts).
"""

from __future__ import annotations

import logging
import statistics
import time

from atp import cli
from atp.data.records import read_jsonl, write_jsonl

log = logging.getLogger("atp.rl")


def rl_settings(config: dict):
    """(RLConfig, RewardConfig) of a job config's `rl` section."""
    from atp.config import to_dataclass
    from atp.rewards import RewardConfig
    from atp.rl import RLConfig

    rl_cfg = to_dataclass(RLConfig, config["rl"], "rl")
    return rl_cfg, to_dataclass(RewardConfig, rl_cfg.rewards or {}, "rl.rewards")


def load_policy(init: str, lora_cfg: dict):
    """The starting policy (an ATP-Latent model) with its step decoder frozen, LoRA on the backbone if configured."""
    from atp.latent import load_latent
    from atp.modeling import apply_lora

    model, tokenizer = load_latent(init)
    model.backbone = apply_lora(model.backbone, lora_cfg)
    return freeze_decoder(model), tokenizer


def freeze_decoder(model):
    """RL trains the backbone, the latent head and the stop head; the step decoder (and its projection) stays as SFT left it."""
    for name, param in model.named_parameters():
        if name.startswith(("decoder.", "decoder_proj.")):
            param.requires_grad_(False)
    return model


def check_world(rl_cfg, world_size: int) -> None:
    """N processes share each step's questions (whole groups) and each minibatch evenly, or the run is refused."""
    from atp.config import ConfigError

    if rl_cfg.questions % world_size:
        raise ConfigError(
            f"config key 'rl.questions': {rl_cfg.questions} questions per RL step do not divide among {world_size} processes "
            f"(each process rolls out whole groups); use a multiple of {world_size}"
        )
    if rl_cfg.minibatch_size % world_size:
        raise ConfigError(
            f"config key 'rl.minibatch_size': {rl_cfg.minibatch_size} trajectories per update do not divide among {world_size} processes; "
            f"use a multiple of {world_size}"
        )


def rollout_generator(seed: int, step: int, rank: int, device):
    """The sampling generator of one process at one RL step: a function of (seed, step, rank) only, so runs are
    reproducible and a resumed run draws what the uninterrupted one drew. Rank 0 keeps the one-process seeds;
    the others hash (seed, step, rank) to 32 bits (the CPU generator keeps only a seed's low 32 bits, so an
    offset like rank << 48 would repeat rank 0's draws)."""
    import hashlib

    import torch

    if rank == 0:
        value = seed * 1_000_003 + step
    else:
        value = int.from_bytes(hashlib.sha256(f"rl-rollout-{seed}-{step}-{rank}".encode()).digest()[:4], "little")
    return torch.Generator(device=device).manual_seed(value)


def grpo_step(
    model, optimizer, trainable, prompts, answers, rl_cfg, reward_cfg, tokenizer, generator, grad_clip: float, ref=None,
    dist=None, bf16: bool = False, diagnose: bool = False,
) -> tuple[dict, list[dict]]:
    """One RL step: rollouts, rewards, group advantages, one pass of PPO-clip updates. Returns (metrics, trajectories).

    `prompts` and `answers` are this process's rows (whole groups). With `dist` of N processes the update
    is synchronised (see atp.rl.ppo_update) and the metrics and trajectories are those of all processes'
    rows, in rank order (every process returns the same). `bf16`: autocast for rollouts and replays.
    `diagnose`: also measure the gradient per action type and its two-half cosine (atp.rl.gradient_diagnostics,
    on this process's rows) before the update. With `rl_cfg.frozen` nothing is updated.
    """
    import torch

    from atp.rewards import correct, total
    from atp.rl import gradient_diagnostics, group_advantages, ppo_update, replay, rollout

    world_size, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.eval()  # no dropout anywhere; eval only makes sampling and replay see the same network
    with autocast:
        traj = rollout(model, prompts, rl_cfg, generator)
        # The log-probabilities the ratios start from come from the replay path itself (TRL computes its old
        # log-probabilities the same way): the sampling loop decodes token by token, the replay in one pass, and
        # their roundings differ (4.8e-7 in fp32 on the tiny test policy, more under bf16 on a GPU), so the first
        # minibatch's ratio is exactly 1 and nothing is clipped before an update.
        with torch.no_grad():
            traj.old = {k: v.detach() for k, v in replay(model, traj, rl_cfg.temperature, rl_cfg.latent_logp).items()}
        used = traj.latents_used.tolist()
        steps = model.decode_steps([traj.feeds[b, :n].float().cpu() for b, n in enumerate(used)], tokenizer)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in traj.answer_ids(model.eos_id)]
    rewards = total(completions, answers if reward_cfg.needs_gold else None, steps, reward_cfg)
    accuracy = rewards["correct"] if reward_cfg.needs_gold else correct(completions, answers=answers)  # monitoring only here
    # Groups are whole on each process, so the advantages need nothing from the other processes.
    advantages = group_advantages(torch.tensor(rewards["total"]), rl_cfg.group_size).to(traj.z.device)
    ref_logps = None
    if ref is not None and rl_cfg.kl_coef > 0:
        with torch.no_grad(), autocast:
            ref_logps = {k: v.detach() for k, v in replay(ref, traj, rl_cfg.temperature, rl_cfg.latent_logp).items()}
    diagnostics = gradient_diagnostics(model, trainable, traj, advantages, rl_cfg, autocast) if diagnose else {}
    stats = {} if rl_cfg.frozen else ppo_update(model, optimizer, trainable, traj, advantages, rl_cfg, generator, grad_clip, ref_logps, world_size, autocast)
    R = len(prompts)
    mine = {
        "rewards": rewards,
        "accuracy": list(accuracy),
        "used": used,
        "answer_tokens": traj.masks["answer"].sum(-1).tolist(),
        "trajectories": [
            {"question_row": rank * R + b, "latents": used[b], "latent_steps": steps[b], "completion": completions[b], "gold": answers[b],
             **{f"reward_{k}": v[b] for k, v in rewards.items()}, "advantage": round(float(advantages[b]), 6)}
            for b in range(R)
        ],
    }
    parts = [mine]
    if world_size > 1:
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, mine)
    rewards = {k: [v for p in parts for v in p["rewards"][k]] for k in rewards}
    accuracy = [v for p in parts for v in p["accuracy"]]
    used = [v for p in parts for v in p["used"]]
    answer_tokens = [v for p in parts for v in p["answer_tokens"]]
    trajectories = [t for p in parts for t in p["trajectories"]]
    groups = torch.tensor(rewards["total"]).view(-1, rl_cfg.group_size)
    metrics = {f"rewards/{k}/mean": statistics.fmean(v) for k, v in rewards.items()}
    metrics.update(
        {
            "rewards/total/group_std": float(groups.std(-1).mean()),
            "rl/accuracy": statistics.fmean(accuracy),
            "rl/latents": statistics.fmean(used),
            "rl/answer_tokens": statistics.fmean(answer_tokens),
            "rl/zero_advantage_groups": float((groups.std(-1) == 0).float().mean()),
            **{f"rl/{k}": statistics.fmean(v) for k, v in stats.items() if v},
            **diagnostics,
        }
    )
    return metrics, trajectories


def main(args, config: dict) -> None:
    import copy

    import torch

    from atp import modeling
    from atp.config import ConfigError
    from atp.latent import save_latent
    from atp.stages.common import History, drop_checkpoints, setup, validation_metrics, write_metrics
    from atp.tracking import Tracker
    from atp.train import batch_schedule, loop_state, lr_factor, optimizer_and_resume, save_checkpoint

    s = setup(args, config)
    if not args.init:
        raise ConfigError(f"config key 'methods.{args.method}.init': the rl stage starts from a trained ATP-Latent model")
    rl_cfg, reward_cfg = rl_settings(config)
    check_world(rl_cfg, s.dist.world_size)
    model, tokenizer = load_policy(args.init, config["model"]["lora"])
    model.to(s.dist.device)
    if s.train_cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()  # the replays recompute; rollouts (no gradient) do not
    ref = copy.deepcopy(model).eval().requires_grad_(False) if rl_cfg.kl_coef > 0 else None
    records = read_jsonl(s.data_dir / "train.jsonl")
    prompts = [modeling.prompt_ids(tokenizer, r["question"]) for r in records]
    # Equal lengths: questions are drawn at random, not grouped by length (which would group them by difficulty).
    schedule = batch_schedule([0] * len(prompts), rl_cfg.questions, s.train_cfg.steps, args.seed)
    trainable, optimizer, start = optimizer_and_resume(model, s.train_cfg, s.ckpt_dir, s.meta)
    log.info(
        "%s from %s: %d trainable of %d parameters; %d RL steps of %d questions x %d rollouts, minibatches of %d; rewards %s",
        args.method, args.init, sum(p.numel() for p in trainable), modeling.count_parameters(model), s.train_cfg.steps,
        rl_cfg.questions, rl_cfg.group_size, rl_cfg.minibatch_size, reward_cfg,
    )
    history = History(s.out_dir / "history.jsonl", s.dist.is_main, s.ckpt_dir)
    traj_dir = s.out_dir / "trajectories"
    started = time.time()
    state = loop_state(s.ckpt_dir) if start else {}
    metrics: dict = state.get("metrics", {})
    recent: list[dict] = state.get("recent", [])  # the last log_every steps, averaged into metrics.json
    from tqdm import tqdm

    with Tracker(config, "rl", args.parent, f"train-{args.method}-seed{args.seed}", s.tags, enabled=s.dist.is_main and not args.no_tracking) as tracker:
        tracker.log_metrics({"train/resumed_from_step": start}, step=start)
        history.begin(start)
        progress = tqdm(total=s.train_cfg.steps, initial=start, desc="rl", mininterval=2.0, disable=not s.dist.is_main)
        for step in range(start, s.train_cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = s.train_cfg.lr * lr_factor(step, s.train_cfg)
            generator = rollout_generator(args.seed, step, s.dist.rank, s.dist.device)
            rows = [i for i in schedule[step] for _ in range(rl_cfg.group_size)]
            share = len(rows) // s.dist.world_size  # this process's rows: whole groups
            mine = rows[s.dist.rank * share : (s.dist.rank + 1) * share]
            step_started = time.time()
            metrics, trajectories = grpo_step(
                model, optimizer, trainable, [prompts[i] for i in mine], [records[i]["answer"] for i in mine],
                rl_cfg, reward_cfg, tokenizer, generator, s.train_cfg.grad_clip, ref, s.dist, s.train_cfg.bf16,
                diagnose=bool(rl_cfg.diagnostics_every) and step % rl_cfg.diagnostics_every == 0,
            )
            done = step + 1
            metrics["rl/lr"] = optimizer.param_groups[0]["lr"]
            metrics["rl/step_seconds"] = time.time() - step_started
            history(done, metrics)  # results/ first, MLflow second
            tracker.log_metrics(metrics, step=done)
            recent = (recent + [metrics])[-s.train_cfg.log_every :]
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['rewards/total/mean']:.3f}", acc=f"{metrics['rl/accuracy']:.2f}")
            if s.dist.is_main and (done % rl_cfg.trajectories_every == 0 or done == s.train_cfg.steps):
                for t in trajectories:
                    t["question"] = records[rows[t["question_row"]]]["question"]
                path = traj_dir / f"step_{done:06d}.jsonl"
                write_jsonl(path, trajectories[: rl_cfg.trajectories_logged])
                tracker.log_artifact(path, "trajectories")
            if s.dist.is_main and (done % s.train_cfg.checkpoint_every == 0 or done == s.train_cfg.steps):
                loop = {"metrics": metrics, "recent": recent}
                save_checkpoint(s.ckpt_dir, done, model, optimizer, {**s.meta, "loop": loop}, s.train_cfg.keep_checkpoints, history.files)
        progress.close()
        keys = sorted({k for m in recent for k in m if not k.endswith("seconds")})  # diagnostics come every few steps only
        final = {f"train/{k.removeprefix('rl/')}": statistics.fmean(m[k] for m in recent if k in m) for k in keys}
        final["train/seconds"] = time.time() - started
        if s.dist.is_main:  # every process holds the same weights; one writes
            if s.train_cfg.val_samples:
                final.update(validation_metrics(model, tokenizer, s.data_dir, s.train_cfg.val_samples, args.seed, s.dist.device))
            save_latent(model, tokenizer, s.out_dir / "model", {**s.meta, "step": s.train_cfg.steps, "init": str(args.init)})
            write_metrics(final, s.out_dir, tracker, s.train_cfg.steps)
            tracker.log_artifact(s.out_dir / "history.jsonl")
    if s.dist.is_main:  # only once the outputs are written and MLflow has them
        drop_checkpoints(s.ckpt_dir)
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    cli.run(main, cli.training_parser("RL with the coherence reward (GRPO over latent trajectories)."))
