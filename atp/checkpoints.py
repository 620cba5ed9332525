"""Checkpoints and resuming, for every stage's loop (atp.train.run_loop): the optimizer a run starts with and the
step it starts from, the checkpoints it writes (weights, optimizer state, the history so far), and `History`.

A checkpoint of another job config, method or seed is discarded, never resumed; one whose optimizer state is in the
other format (FSDP's full state against torch's own) is refused.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from atp.config import TrainConfig
from atp.runtime import Dist, git_info, read_json, reproducible, write_json

log = logging.getLogger(__name__)


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
    path = resume_point(ckpt_dir, meta) if ckpt_dir is not None else None
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

    path = resume_point(ckpt_dir, meta, "fsdp") if ckpt_dir is not None else None
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
