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
(`steps` = RL steps, lr, schedule, clipping, checkpoints) come from `train`.

Writes <out-dir>/model/, <out-dir>/metrics.json, <out-dir>/history.jsonl (one line
per RL step) and <out-dir>/trajectories/step_*.jsonl (sampled trajectories with
their decoded latent steps, also MLflow artifacts).
"""

from __future__ import annotations

import logging
import math
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


def grpo_step(model, optimizer, trainable, prompts, answers, rl_cfg, reward_cfg, tokenizer, generator, grad_clip: float, ref=None) -> tuple[dict, list[dict]]:
    """One RL step: rollouts, rewards, group advantages, one pass of PPO-clip updates. Returns (metrics, trajectories)."""
    import torch

    from atp.rewards import correct, total
    from atp.rl import group_advantages, ppo_clip_loss, replay, rollout
    from atp.runtime import NonFiniteLoss

    model.eval()  # no dropout anywhere; eval only makes sampling and replay see the same network
    traj = rollout(model, prompts, rl_cfg, generator)
    used = traj.latents_used.tolist()
    steps = model.decode_steps([traj.feeds[b, :n].cpu() for b, n in enumerate(used)], tokenizer)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in traj.answer_ids(model.eos_id)]
    rewards = total(completions, answers if reward_cfg.needs_gold else None, steps, reward_cfg)
    accuracy = rewards["correct"] if reward_cfg.needs_gold else correct(completions, answers=answers)  # monitoring only here
    advantages = group_advantages(torch.tensor(rewards["total"]), rl_cfg.group_size).to(traj.z.device)
    ref_logps = None
    if ref is not None and rl_cfg.kl_coef > 0:
        with torch.no_grad():
            ref_logps = {k: v.detach() for k, v in replay(ref, traj, rl_cfg.temperature).items()}
    stats: dict[str, list[float]] = {"loss": [], "clip_fraction": [], "grad_norm": [], "kl": []}
    R = len(prompts)
    for _ in range(rl_cfg.epochs):
        order = torch.randperm(R, generator=generator, device=generator.device).tolist()
        for start in range(0, R, rl_cfg.minibatch_size):
            index = order[start : start + rl_cfg.minibatch_size]
            part = traj.rows(index)
            new = replay(model, part, rl_cfg.temperature)
            ref_part = {k: v[torch.tensor(index, device=v.device)] for k, v in ref_logps.items()} if ref_logps else None
            loss, info = ppo_clip_loss(new, part.old, part.masks, advantages[torch.tensor(index, device=advantages.device)], rl_cfg, ref_part)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip if grad_clip > 0 else float("inf")).item()
            if not (math.isfinite(loss.item()) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLoss(f"RL loss {loss.item()}, gradient norm {grad_norm}; stopped before updating the weights")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats["loss"].append(loss.item())
            stats["clip_fraction"].append(info["clip_fraction"])
            stats["grad_norm"].append(grad_norm)
            if "kl" in info:
                stats["kl"].append(info["kl"])
    groups = torch.tensor(rewards["total"]).view(-1, rl_cfg.group_size)
    metrics = {f"rewards/{k}/mean": statistics.fmean(v) for k, v in rewards.items()}
    metrics.update(
        {
            "rewards/total/group_std": float(groups.std(-1).mean()),
            "rl/accuracy": statistics.fmean(accuracy),
            "rl/latents": statistics.fmean(used),
            "rl/answer_tokens": float(traj.masks["answer"].sum(-1).float().mean()),
            "rl/zero_advantage_groups": float((groups.std(-1) == 0).float().mean()),
            **{f"rl/{k}": statistics.fmean(v) for k, v in stats.items() if v},
        }
    )
    trajectories = [
        {"question_row": b, "latents": used[b], "latent_steps": steps[b], "completion": completions[b], "gold": answers[b],
         **{f"reward_{k}": v[b] for k, v in rewards.items()}, "advantage": round(float(advantages[b]), 6)}
        for b in range(R)
    ]
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
    if s.dist.world_size > 1:
        raise ConfigError("the rl stage runs on one process for now (multi-process RL is issue 5's work)")
    rl_cfg, reward_cfg = rl_settings(config)
    model, tokenizer = load_policy(args.init, config["model"]["lora"])
    model.to(s.dist.device)
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
        progress = tqdm(total=s.train_cfg.steps, initial=start, desc="rl", mininterval=2.0)
        for step in range(start, s.train_cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = s.train_cfg.lr * lr_factor(step, s.train_cfg)
            generator = torch.Generator(device=s.dist.device).manual_seed(args.seed * 1_000_003 + step)
            rows = [i for i in schedule[step] for _ in range(rl_cfg.group_size)]
            step_started = time.time()
            metrics, trajectories = grpo_step(
                model, optimizer, trainable, [prompts[i] for i in rows], [records[i]["answer"] for i in rows],
                rl_cfg, reward_cfg, tokenizer, generator, s.train_cfg.grad_clip, ref,
            )
            done = step + 1
            metrics["rl/lr"] = optimizer.param_groups[0]["lr"]
            metrics["rl/step_seconds"] = time.time() - step_started
            history(done, metrics)  # results/ first, MLflow second
            tracker.log_metrics(metrics, step=done)
            recent = (recent + [metrics])[-s.train_cfg.log_every :]
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['rewards/total/mean']:.3f}", acc=f"{metrics['rl/accuracy']:.2f}")
            if done % rl_cfg.trajectories_every == 0 or done == s.train_cfg.steps:
                for t in trajectories:
                    t["question"] = records[rows[t["question_row"]]]["question"]
                path = traj_dir / f"step_{done:06d}.jsonl"
                write_jsonl(path, trajectories[: rl_cfg.trajectories_logged])
                tracker.log_artifact(path, "trajectories")
            if done % s.train_cfg.checkpoint_every == 0 or done == s.train_cfg.steps:
                loop = {"metrics": metrics, "recent": recent}
                save_checkpoint(s.ckpt_dir, done, model, optimizer, {**s.meta, "loop": loop}, s.train_cfg.keep_checkpoints, history.files)
        progress.close()
        keys = [k for k in metrics if not k.endswith("seconds")]
        final = {f"train/{k.removeprefix('rl/')}": statistics.fmean(m.get(k, 0.0) for m in recent) for k in keys} if recent else {}
        final["train/seconds"] = time.time() - started
        if s.train_cfg.val_samples:
            final.update(validation_metrics(model, tokenizer, s.data_dir, s.train_cfg.val_samples, args.seed, s.dist.device))
        save_latent(model, tokenizer, s.out_dir / "model", {**s.meta, "step": s.train_cfg.steps, "init": str(args.init)})
        write_metrics(final, s.out_dir, tracker, s.train_cfg.steps)
        tracker.log_artifact(s.out_dir / "history.jsonl")
    drop_checkpoints(s.ckpt_dir)
    log.info("done in %.1fs", time.time() - started)


if __name__ == "__main__":
    cli.run(main, cli.training_parser("RL with the coherence reward (GRPO over latent trajectories)."))
