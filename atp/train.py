"""The training loop every stage runs (SFT, latent SFT and RL): schedule, accumulation, checkpoints, resume.

The whole batch schedule is a pure function of (seed, data, step count), so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would
have seen. The loss is a per-token mean over the *effective* batch, whatever the
split into processes and micro-batches, so 1 and N processes follow one curve.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from atp.config import TrainConfig
from atp.runtime import Dist, NonFiniteLoss, git_info, read_json, reproducible, write_json

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class Example:
    """One tokenized training sequence; `labels` is IGNORE where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


def batch_schedule(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of example indices: shuffled epochs, length-grouped within chunks of 50 batches.

    Grouping by length keeps padding low; shuffling the batches keeps the order random.
    """
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} training examples are fewer than one batch of {batch_size}")
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        chunk = batch_size * 50
        epoch = []
        for start in range(0, len(order) - batch_size + 1, chunk):
            part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
            epoch += [part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
        rng.shuffle(epoch)
        batches += epoch
    return batches[:steps]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every sequence ending in the last column (prompts for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s) :] = 1
    return ids, mask


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropies over labelled positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


class TokenObjective:
    """Next-token cross-entropy on the labelled tokens, a per-token mean over the effective batch.

    An objective tells the loop two things: `totals` (the normalisers of one effective
    batch, counted before it is split) and `loss` (one micro-batch's share of the
    batch loss, plus its named parts, each already divided by those totals), so that
    summing over micro-batches and processes gives the same number however it is split.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def totals(self, items: list[Example], step: int) -> dict[str, float]:
        return {"tokens": sum(sum(1 for t in e.labels[1:] if t != IGNORE) for e in items)}

    def loss(
        self, model, items: list[Example], totals: dict[str, float], step: int, device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = {key: value.to(device) for key, value in collate(items, self.pad_id).items()}
        loss = token_loss_sum(model, batch) / totals["tokens"]
        return loss, {"loss": loss.detach()}


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


# ---------------------------------------------------------------- checkpoints


def checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts once its meta.json exists)."""
    if not ckpt_dir.exists():
        return []
    return sorted((p for p in ckpt_dir.glob("step_*") if (p / "meta.json").exists()), key=lambda p: int(p.name[5:]))


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model,
    optimizer,
    meta: dict,
    keep: int,
    files: tuple[Path, ...] = (),
    state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Weights as safetensors, optimizer state as tensors, copies of `files` (the run's history so far),
    meta.json last (it marks the folder complete). `state` and `optimizer_state`, when given, are
    written instead of the model's and the optimizer's own (FSDP: the gathered full ones)."""
    from safetensors.torch import save_file

    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if state is None:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, tmp / "model.safetensors")  # cloned, so tied weights no longer share memory
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
    for file in files:
        if Path(file).exists():
            shutil.copy2(file, tmp / Path(file).name)
    write_json(tmp / "meta.json", {**meta, "step": step, **{f"git_{k}": v for k, v in git_info().items()}})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer) -> int:
    """Restore weights and optimizer state; returns the step the checkpoint was taken after."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(read_json(path / "meta.json")["step"])


def drop_checkpoints(ckpt_dir: Path) -> None:
    """Delete a finished run's checkpoints: a later rerun (changed code, --forcerun) must train afresh, not resume."""
    shutil.rmtree(ckpt_dir, ignore_errors=True)


class History:
    """Per-step training metrics as JSON lines (`history.jsonl`, read by the report's curves).

    Each checkpoint keeps a copy of the file. A resumed run starts from that copy (Snakemake deletes
    the incomplete file of an interrupted job), keeping the lines before the step it restarts from,
    so the file always describes one uninterrupted run.
    """

    def __init__(self, path: Path, enabled: bool = True, ckpt_dir: Path | None = None):
        self.path, self.enabled, self.ckpt_dir, self._started = Path(path), enabled, ckpt_dir, False

    def begin(self, start: int) -> None:
        """Open the file for a run that continues after step `start` (0: a fresh run): keep the lines up
        to `start`, from the newest checkpoint's copy if there is one, else from the file itself."""
        import json

        self._started = True
        if not self.enabled:
            return
        saved = [c / self.path.name for c in checkpoints(self.ckpt_dir)] if self.ckpt_dir else []
        source = saved[-1] if saved and saved[-1].exists() else self.path
        kept = []
        if start and source.exists():
            kept = [
                line for line in source.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= start
            ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def __call__(self, step: int, metrics: dict) -> None:
        import json

        if not self._started:
            self.begin(step - 1)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **reproducible(metrics)}, sort_keys=True) + "\n")

    @property
    def files(self) -> tuple[Path, ...]:
        """What a checkpoint copies: the history written so far (nothing on ranks that do not write it)."""
        return (self.path,) if self.enabled else ()


# ---------------------------------------------------------------- the loop


RESUME_KEYS = ("method", "seed", "config_hash")


def optimizer_format(strategy: str | None) -> str:
    """How a checkpoint's optimizer.pt is keyed: `full` (FSDP's full state, by parameter name) or
    `plain` (torch's own optimizer.state_dict(), by parameter position: 1 process and DDP)."""
    return "full" if strategy == "fsdp" else "plain"


def resume_point(ckpt_dir: Path, meta: dict | None = None, strategy: str = "single") -> Path | None:
    """The newest checkpoint to resume from, or None (checkpoints of another job config, method or
    seed are discarded). A checkpoint whose optimizer state is in the other format (written under
    FSDP, resumed without it, or the reverse) is refused: the run would silently lose its optimizer state."""
    from atp.config import ConfigError

    existing = checkpoints(ckpt_dir)
    if existing and meta is not None:
        saved = read_json(existing[-1] / "meta.json")
        differs = [k for k in RESUME_KEYS if k in meta and saved.get(k) != meta[k]]
        if differs:
            log.warning(
                "checkpoints in %s were made with another %s; discarding them and training from step 0",
                ckpt_dir,
                ", ".join(differs),
            )
            drop_checkpoints(ckpt_dir)
            existing = []
    if not existing:
        return None
    saved = read_json(existing[-1] / "meta.json")
    written = saved.get("strategy", "single")  # checkpoints from before FSDP: 1 process or DDP
    if optimizer_format(written) != optimizer_format(strategy):
        how = (
            "accelerate launch --config_file workflow/accelerate/fsdp.yaml"
            if written == "fsdp"
            else "workflow/accelerate/ddp.yaml, torchrun or one process"
        )
        raise ConfigError(
            f"the checkpoint {existing[-1]} was written with strategy {written} and this run is {strategy}: their "
            "optimizer states "
            f"are saved in different formats, so it cannot resume there. Relaunch it as it was launched ({written}: {how}), "
            f"or delete {ckpt_dir} to train from step 0"
        )
    if saved.get("git_commit") != git_info()["commit"]:
        log.warning("the checkpoint was written by commit %s; this code is %s", saved.get("git_commit"), git_info()["commit"])
    return existing[-1]


def optimizer_and_resume(
    model, cfg: TrainConfig, ckpt_dir: Path, meta: dict | None = None
) -> tuple[list, torch.optim.Optimizer, int]:
    """(trainable parameters, AdamW over them, the step to start from): restored from the newest checkpoint if any.

    Every training loop (the SFT stages here, the RL stage) starts this way, so they resume alike.
    Checkpoints of another job config, method or seed (`meta`'s keys) are discarded, never resumed.
    """
    trainable, optimizer = make_optimizer(model, cfg)
    start = 0
    path = resume_point(ckpt_dir, meta)
    if path is not None:
        start = load_checkpoint(path, model, optimizer)
        log.info("resuming from checkpoint %s (step %d of %d)", path, start, cfg.steps)
    return trainable, optimizer, start


def make_optimizer(model, cfg: TrainConfig) -> tuple[list, torch.optim.Optimizer]:
    """(trainable parameters, AdamW over them)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return trainable, torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))


def sharded_and_resume(
    model, cfg: TrainConfig, ckpt_dir: Path, meta: dict | None, device
) -> tuple[torch.nn.Module, list, torch.optim.Optimizer, int]:
    """FSDP's optimizer_and_resume: (the sharded copy of `model` that trains, its trainable parameters,
    AdamW over them, the step to start from). The checkpoint's weights go into the plain `model` before
    it is copied and sharded; the plain model then waits on the CPU (see atp.sharding)."""
    from safetensors.torch import load_file

    from atp import sharding

    path = resume_point(ckpt_dir, meta, "fsdp")
    start = 0
    if path is not None:
        model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
        start = int(read_json(path / "meta.json")["step"])
    model.to("cpu")
    sharded = sharding.shard(model, device)
    trainable, optimizer = make_optimizer(sharded, cfg)
    if path is not None:
        sharding.load_optimizer_state(sharded, optimizer, torch.load(path / "optimizer.pt", weights_only=True))
        log.info("resuming from checkpoint %s (step %d of %d)", path, start, cfg.steps)
    return sharded, trainable, optimizer, start


def loop_state(ckpt_dir: Path) -> dict:
    """What the newest checkpoint saved of a loop's own state (the open logging window); {} if none."""
    existing = checkpoints(ckpt_dir)
    return read_json(existing[-1] / "meta.json").get("loop", {}) if existing else {}


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


def checkpoint_writer(
    ckpt_dir: Path,
    model,
    optimizer,
    meta: dict,
    cfg: TrainConfig,
    dist: Dist,
    history: History | None,
    strategy: str,
    train_model=None,
) -> Callable[[int, dict], None]:
    """`save(done, loop)` for `run_loop`: the weights, optimizer state and history so far, written by process 0.
    FSDP (`train_model` the sharded copy) first gathers the full weights and optimizer state on every process."""

    def save(done: int, loop: dict) -> None:
        full = optimizer_full = None
        if strategy == "fsdp":
            from atp import sharding

            full = sharding.full_state(train_model, keep=dist.is_main)
            optimizer_full = sharding.optimizer_state(train_model, optimizer)
        if dist.is_main:
            save_checkpoint(
                ckpt_dir,
                done,
                model,
                optimizer,
                {**meta, "strategy": strategy, "loop": loop},
                cfg.keep_checkpoints,
                history.files if history else (),
                state=full,
                optimizer_state=optimizer_full,
            )

    return save


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
    ckpt_dir: Path,
    objective,
    tracker,
    meta: dict,
    lengths: list[int] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    history: History | None = None,
    strategy: str | None = None,
) -> dict:
    """Train `model` on `items` for `cfg.steps` steps, resuming from the newest checkpoint in `ckpt_dir`.

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
    save = checkpoint_writer(ckpt_dir, model, optimizer, meta, cfg, dist, history, strategy, train_model)
    metrics = run_loop(task, optimizer, cfg, seed, dist, ckpt_dir, start, tracker, history, save, on_log)
    if fsdp:  # every process: the trained weights into the caller's model, back on the device
        sharding.load_full_state(model, train_model)
        del train_model, trainable, optimizer, task
        model.to(dist.device)
    model.eval()
    return metrics
