"""The training loop every stage runs (SFT, latent SFT and RL): seeds and learning rate per step, accumulation,
gradient clipping, logging windows; checkpoints and resuming are atp.checkpoints', batches atp.batches'.

The loss is a per-token mean over the *effective* batch, whatever the split into processes and micro-batches, so 1
and N processes follow one curve; a resumed run logs and returns what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from atp.batches import batch_schedule
from atp.checkpoints import History, checkpoint_writer, loop_state, optimizer_and_resume, sharded_and_resume
from atp.config import TrainConfig
from atp.runtime import Dist, NonFiniteLoss

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- seeding


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """torch's global seed for one optimizer step on one process (the loop sets it before every step): the noise
    a step draws (sampled latents) depends on (seed, step, rank) only, so a run resumed at any step draws what the
    uninterrupted one drew."""
    return (seed * 1_000_003 + step) * 1024 + rank


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The RL rollouts' own sampling generator for one process at one step, a function of (seed, step, rank) only
    like `step_seed`. Rank 0 keeps the one-process seeds; the others hash (seed, step, rank) to 32 bits (the CPU
    generator keeps only a seed's low 32 bits, so an offset like rank << 48 would repeat rank 0's draws)."""
    import hashlib

    if rank == 0:
        value = seed * 1_000_003 + step
    else:
        value = int.from_bytes(hashlib.sha256(f"rl-rollout-{seed}-{step}-{rank}".encode()).digest()[:4], "little")
    return torch.Generator(device=device).manual_seed(value)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` (step counts from 0)."""
    warmup = int(cfg.warmup_ratio * cfg.steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- the loop


def apply_gradients(optimizer, trainable: list, grad_clip: float, loss_value: float, fsdp: bool = False) -> float:
    """Clip, refuse a non-finite loss or gradient, step, zero: every update of every stage goes through here.

    The norm is computed even without clipping: a non-finite gradient must never reach the weights. Returns
    the gradient norm before clipping.
    """
    norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip if grad_clip > 0 else float("inf"))
    grad_norm = (norm.full_tensor() if fsdp else norm).item()  # FSDP: a replicated DTensor
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"loss {loss_value}, gradient norm {grad_norm}")  # run_loop adds the step and what was kept
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class Task(Protocol):
    """One kind of training as `run_loop` runs it: `SupervisedTask` (SFT and latent SFT), atp.rl.GRPOTask (RL)."""

    desc: str  # the progress bar's label
    log_every: int  # steps between log points (history line, MLflow)
    summary_window: int  # logged lines `summary` reads

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step (SFT: accumulation over micro-batches) or one RL step (rollouts + PPO updates); its metrics."""

    def window_metrics(self, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
        """What a log point logs, from the steps since the last one (`seconds` their wall time)."""

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """The progress bar's figures."""

    def on_log(self, done: int, metrics: dict[str, float]) -> None:
        """Anything else a log point writes (RL: sampled trajectories)."""

    def summary(self, logged: list[dict[str, float]]) -> dict[str, float]:
        """The run's final metrics, from its last `summary_window` logged lines."""


def run_loop(
    task: Task,
    optimizer,
    cfg: TrainConfig,
    seed: int,
    dist: Dist,
    ckpt_dir: Path,
    start: int,
    tracker,
    history: History | None,
    save: Callable[[int, dict], None],
    on_log: Callable[[int, dict], None] | None = None,
) -> dict:
    """Steps `start` .. `cfg.steps` of `task`: the one loop of every stage.

    Before each step: the learning rate of the schedule (`lr_factor`) and torch's seed (`step_seed`). Every
    `task.log_every` steps (and after the last): a history line (results/ first), MLflow, `on_log`. Every
    `cfg.checkpoint_every` steps (and after the last, so that a failure in what follows training resumes there
    instead of training again): `save(done, loop state)`, on every process. The open logging window and the
    logged lines travel in the checkpoints, so a resumed run logs and returns exactly what the uninterrupted
    run would have. A non-finite loss or gradient stops the run before the weights change, naming the step.
    """
    from tqdm import tqdm

    state = loop_state(ckpt_dir) if start else {}
    window: list[dict] = state.get("open", [])  # (checkpoints of older code kept other keys: nothing to restore)
    logged: list[dict] = state.get("logged", [])
    tracker.log_metrics({"train/resumed_from_step": start}, step=start)
    if history is not None:
        history.begin(start)
    progress = tqdm(total=cfg.steps, initial=start, desc=task.desc, disable=not dist.is_main, mininterval=2.0)
    window_start = time.time()
    for step in range(start, cfg.steps):
        torch.manual_seed(step_seed(seed, step, dist.rank))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        try:
            window.append(task.step(step))
        except NonFiniteLoss as error:
            raise NonFiniteLoss(
                f"{error} at step {step + 1}; stopped before updating the weights. The last good checkpoint is kept in {ckpt_dir}"
            ) from None
        progress.update(1)
        done = step + 1
        if done % task.log_every == 0 or done == cfg.steps:
            metrics = task.window_metrics(window, time.time() - window_start)
            progress.set_postfix(task.postfix(metrics))
            if history is not None:  # results/ first, MLflow second: a tracking fault cannot lose the record
                history(done, metrics)
            tracker.log_metrics(metrics, step=done)
            logged = (logged + [metrics])[-task.summary_window :]
            task.on_log(done, metrics)
            if on_log is not None:
                on_log(done, metrics)
            window, window_start = [], time.time()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save(done, {"open": window, "logged": logged})
    progress.close()
    return task.summary(logged)


class SupervisedTask:
    """One optimizer step of SFT or latent SFT: the step's effective batch (from the fixed schedule) split into
    this process's share and its micro-batches, the objective's loss, gradients summed over processes."""

    desc = "train"
    summary_window = 1  # the run's metrics are its last log window's

    def __init__(
        self,
        train_model,
        items: list,
        schedule: list[list[int]],
        objective,
        optimizer,
        trainable: list,
        cfg: TrainConfig,
        dist: Dist,
        fsdp: bool,
    ):
        self.train_model, self.items, self.schedule, self.objective = train_model, items, schedule, objective
        self.optimizer, self.trainable, self.cfg, self.dist, self.fsdp = optimizer, trainable, cfg, dist, fsdp
        self.log_every = cfg.log_every
        self.micro, self.accumulation = cfg.accumulation(dist.world_size)
        self.autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.grad_norm = float("nan")

    def step(self, step: int) -> dict[str, float]:
        dist, micro, accumulation = self.dist, self.micro, self.accumulation
        batch_items = [self.items[i] for i in self.schedule[step]]
        totals = self.objective.totals(batch_items, step)
        mine = batch_items[dist.rank * micro * accumulation : (dist.rank + 1) * micro * accumulation]
        parts: dict[str, torch.Tensor] = {}
        for k in range(accumulation):
            with self.autocast:
                loss, micro_parts = self.objective.loss(
                    self.train_model, mine[k * micro : (k + 1) * micro], totals, step, dist.device
                )
            # DDP and FSDP average gradients over processes; scale so the result is the mean over the effective batch.
            (loss * dist.world_size).backward()
            for name, value in micro_parts.items():
                parts[name] = parts.get(name, 0) + value.detach().float()
        names = sorted(parts)
        stacked = torch.stack([parts[n] for n in names]).to(dist.device)
        if dist.world_size > 1:
            torch.distributed.all_reduce(stacked)
        values = dict(zip(names, stacked.tolist()))
        self.grad_norm = apply_gradients(self.optimizer, self.trainable, self.cfg.grad_clip, values["loss"], self.fsdp)
        return values

    def window_metrics(self, window: list[dict[str, float]], seconds: float) -> dict[str, float]:
        names = list(dict.fromkeys(name for values in window for name in values))
        metrics = {f"train/{name}": sum(values[name] for values in window if name in values) / len(window) for name in names}
        metrics.update(
            {
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/grad_norm": self.grad_norm,
                "train/steps_per_s": len(window) / max(seconds, 1e-9),
            }
        )
        return metrics

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['train/loss']:.4f}"}

    def on_log(self, done: int, metrics: dict[str, float]) -> None:
        pass

    def summary(self, logged: list[dict[str, float]]) -> dict[str, float]:
        return dict(logged[-1]) if logged else {}


def train(
    model,
    items: list,
    cfg: TrainConfig,
    dist: Dist,
    seed: int,
    ckpt_dir: Path | None,
    objective,
    tracker,
    meta: dict,
    lengths: list[int] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    history: History | None = None,
    strategy: str | None = None,
) -> dict:
    """Train `model` on `items` for `cfg.steps` steps, resuming from the newest checkpoint in `ckpt_dir`
    (None: a measurement run, such as scripts/gpu_check.py's, that reads and writes no checkpoint).

    `objective` turns items into a loss (see TokenObjective); `lengths` (default: the
    items' input lengths) groups batches by length. Every named part of the loss is
    logged as `train/<part>`, and to `history`. Returns the metrics of the last log window,
    the same whether or not the run was interrupted and resumed (see run_loop).

    `strategy` (default: what the launch asked for, atp.launch.strategy) is `single`, `ddp` (torch DDP
    around `model`) or `fsdp`: a fully sharded copy of `model` trains while `model` waits on the CPU, and
    `model` gets the trained weights on every process at the end (see atp.sharding); either way `model`
    is trained, in eval mode and on `dist.device` when this returns.
    """
    from atp import launch, sharding

    strategy = strategy or launch.strategy(dist.world_size)
    fsdp = strategy == "fsdp"
    if lengths is None:
        lengths = [len(e.input_ids) for e in items]
    schedule = batch_schedule(lengths, cfg.batch_size, cfg.steps, seed)
    if fsdp:
        train_model, trainable, optimizer, start = sharded_and_resume(model, cfg, ckpt_dir, meta, dist.device)
    else:
        trainable, optimizer, start = optimizer_and_resume(model, cfg, ckpt_dir, meta)
        train_model = model
        if dist.world_size > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(model)
    train_model.train()
    task = SupervisedTask(train_model, items, schedule, objective, optimizer, trainable, cfg, dist, fsdp)
    if ckpt_dir is None:
        save = lambda done, loop: None  # noqa: E731
    else:
        save = checkpoint_writer(ckpt_dir, model, optimizer, meta, cfg, dist, history, strategy, train_model)
    metrics = run_loop(task, optimizer, cfg, seed, dist, ckpt_dir, start, tracker, history, save, on_log)
    if fsdp:  # every process: the trained weights into the caller's model, back on the device
        sharding.load_full_state(model, train_model)
        del train_model, trainable, optimizer, task
        model.to(dist.device)
    model.eval()
    return metrics
