"""What every training stage does around its loop: set-up, run tags, and the final files.

Keeping it in one place makes the SFT and latent stages write the same kind of
metrics.json (only what a rerun reproduces exactly) and log the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atp.checkpoints import History, drop_checkpoints  # noqa: F401 - the stages' one import place
from atp.config import TrainConfig, config_hash, to_dataclass
from atp.runtime import Dist, compute_init, reproducible, seed_everything, write_json


@dataclass
class StageSetup:
    dist: Dist
    method: dict
    train_cfg: TrainConfig
    data_dir: Path
    out_dir: Path
    ckpt_dir: Path
    tokenizer: object
    meta: dict
    tags: dict


def setup(args, config: dict) -> StageSetup:
    """Processes, seed, the method's settings, folders and the tokenizer of a training stage.

    First of all, the launch is checked against the method's stage (atp.launch.check_launch): a launch the
    stage cannot honour (DeepSpeed, or FSDP for RL) is refused before the process group and the model."""
    from atp import modeling
    from atp.launch import check_launch

    check_launch(config["methods"][args.method]["stage"])
    dist = compute_init(args.threads)
    seed_everything(args.seed)
    out_dir = Path(args.out_dir)
    return StageSetup(
        dist=dist,
        method=config["methods"][args.method],
        train_cfg=to_dataclass(TrainConfig, config["train"], "train"),
        data_dir=Path(args.data_dir),
        out_dir=out_dir,
        ckpt_dir=Path(args.checkpoint_dir or out_dir.parent / f".checkpoints_{out_dir.name}"),
        tokenizer=modeling.load_tokenizer(Path(args.data_dir) / "tokenizer"),
        meta={"method": args.method, "seed": args.seed, "config_hash": config_hash(config), "config": config},
        tags={"rule": args.rule or "train", "wildcards": args.wildcards, "seed": args.seed, "method": args.method},
    )


def stage_tracker(args, config: dict, s: StageSetup, stage: str):
    """The MLflow run of a training job: one per method and seed under the pipeline's parent, main process only."""
    from atp.tracking import Tracker

    return Tracker(
        config,
        stage,
        args.parent,
        f"train-{args.method}-seed{args.seed}",
        s.tags,
        enabled=s.dist.is_main and not args.no_tracking,
    )


def starting_model(args, config: dict, tokenizer):
    """The model a training stage starts from: --init's model, or the base model; LoRA-wrapped if configured."""
    from atp import modeling

    model = modeling.load_model(args.init)[0] if args.init else modeling.build_model(config["model"], tokenizer)
    return modeling.apply_lora(model, config["model"]["lora"])


def write_metrics(metrics: dict, out_dir: Path, tracker, step: int) -> None:
    """metrics.json holds only what a rerun reproduces exactly; timings go to MLflow and the benchmark file."""
    write_json(out_dir / "metrics.json", reproducible(metrics))
    tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith(("val/", "train/seconds"))}, step=step)
    tracker.log_artifact(out_dir / "metrics.json")
    tracker.log_artifact(out_dir / "model" / "meta.json")


def language_validation(model, tokenizer, data_dir: Path, samples: int, device) -> dict:
    """`val/accuracy` and `val/tokens` of a language model, greedy, on the first `samples` validation problems: what
    the SFT stage and RL from a CoT model put into metrics.json."""
    import logging

    from atp.data.records import read_jsonl
    from atp.evaluate import greedy_generate, score

    val = read_jsonl(Path(data_dir) / "val.jsonl")[:samples]
    _, metrics = score(val, greedy_generate(model, tokenizer, [r["question"] for r in val], 96, 250, device))
    logging.getLogger("atp.validation").info("val accuracy %.3f on %d problems", metrics["accuracy"], len(val))
    return {"val/accuracy": metrics["accuracy"], "val/tokens": metrics["tokens"]}


def validation_metrics(model, tokenizer, data_dir: Path, samples: int, seed: int, device) -> dict:
    """`val/accuracy`, `val/tokens` and `val/fidelity` of a latent model on the first `samples` validation
    problems (suffix `_sample` for sampled latents); what the latent and RL stages put into metrics.json."""
    import logging

    from atp.data.records import read_jsonl
    from atp.evaluate import latent_validation

    val = read_jsonl(Path(data_dir) / "val.jsonl")[:samples]
    metrics = {}
    for mode, m in latent_validation(model, tokenizer, val, seed, device).items():
        suffix = "" if mode == "mu" else "_sample"
        metrics.update({f"val/accuracy{suffix}": m["accuracy"], f"val/tokens{suffix}": m["tokens"]})
        if m["fidelity"] is not None:
            metrics[f"val/fidelity{suffix}"] = m["fidelity"]
        logging.getLogger("atp.validation").info(
            "val accuracy (%s latents) %.3f, %.2f tokens, on %d problems", mode, m["accuracy"], m["tokens"], len(val)
        )
    return metrics
