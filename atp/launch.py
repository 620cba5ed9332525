"""How a training stage is launched, what it checks about that launch, and which parallel strategy the launch asks for.

The workflow's `train` rule starts every training job through one command,

    python -m atp.launch --gpus {resources.gpu} --accelerate {resources.accelerate} atp.stages.<stage> <stage args>

which runs the stage with this interpreter on one process (gpus 0 or 1) or through `accelerate launch` on
`gpus` processes with the accelerate config `$ATP_ACCELERATE_CONFIGS/<accelerate>.yaml` (default
workflow/accelerate/), so that the rule reads in one hop and the choice is tested here.

The stages do their own parallelism and never call accelerate's Accelerator, so accelerate is only a
process launcher here: its config's distributed_type reaches the stages as environment variables.
- MULTI_GPU (workflow/accelerate/ddp.yaml), torchrun: `ddp`, torch DDP in atp/train.py and an explicit
  gradient all-reduce in the RL update.
- FSDP (workflow/accelerate/fsdp.yaml, ACCELERATE_USE_FSDP=true): `fsdp`, torch's fully_shard per decoder
  layer in atp/train.py (atp/sharding.py), for the SFT stages (sft, latent_sft). The RL stage's update
  all-reduces whole gradients itself, which does not shard: it refuses FSDP.
- DeepSpeed and Megatron-LM would be silently ignored: every stage refuses them, before loading anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from atp.config import ConfigError

log = logging.getLogger(__name__)
UNSUPPORTED = {
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}
FSDP = "ACCELERATE_USE_FSDP"
FSDP_STAGES = ("sft", "latent_sft")  # the stages whose loop is atp.train.train
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "workflow" / "accelerate"


def _true(environ, key: str) -> bool:
    return environ.get(key, "false").lower() in ("true", "1", "yes")


def strategy(world_size: int, environ: dict | None = None) -> str:
    """`fsdp` (an accelerate FSDP launch on more than one process), `ddp` (any other launch on more than one), or `single`."""
    environ = os.environ if environ is None else environ
    if world_size <= 1:
        if _true(environ, FSDP):
            log.warning("an FSDP launch on one process: nothing to shard, training as one process")
        return "single"
    return "fsdp" if _true(environ, FSDP) else "ddp"


def check_launch(stage: str, environ: dict | None = None) -> None:
    """Raise ConfigError when accelerate was asked for what stage `stage` (sft, latent_sft, rl) does not do;
    warn about its precision setting."""
    environ = os.environ if environ is None else environ
    for key, name in UNSUPPORTED.items():
        if _true(environ, key):
            raise ConfigError(
                f"launched with an accelerate {name} config ({key}={environ[key]}): the training stages run data-parallel "
                f"(DDP, and FSDP for {' and '.join(FSDP_STAGES)}) only; launch with workflow/accelerate/ddp.yaml "
                "(the train rule's "
                f"default, resources.accelerate=ddp), workflow/accelerate/fsdp.yaml or torchrun"
            )
    if _true(environ, FSDP) and stage not in FSDP_STAGES:
        raise ConfigError(
            f"launched with an accelerate FSDP config ({FSDP}={environ[FSDP]}): the {stage} stage runs data-parallel (DDP) only "
            f"(its update all-reduces whole gradients, which does not shard); FSDP works for the {' and '.join(FSDP_STAGES)} "
            f"stages. Launch {stage} with workflow/accelerate/ddp.yaml (resources.accelerate=ddp, the train rule's "
            "default) or torchrun"
        )
    precision = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision not in ("no", ""):
        log.warning(
            "accelerate's mixed_precision=%s is ignored: precision is the config's train.bf16 (autocast in the stages)", precision
        )


def command(module: str, args: list[str], gpus: int, accelerate: str = "ddp", environ: dict | None = None) -> list[str]:
    """The command line that runs `python -m module args` on `gpus` processes (one process for 0 or 1 GPU)."""
    environ = os.environ if environ is None else environ
    if gpus <= 1:
        return [sys.executable, "-m", module, *args]
    config = Path(environ.get("ATP_ACCELERATE_CONFIGS") or ACCELERATE_CONFIGS) / f"{accelerate}.yaml"
    if not config.exists():
        raise ConfigError(f"resources.accelerate={accelerate}: no accelerate config {config} (workflow/accelerate/: ddp, fsdp)")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", str(gpus)]
    return [*launch, "-m", module, *args]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run a stage module on one process or, with --gpus N > 1, through accelerate launch.")
    p.add_argument("--gpus", type=int, default=0, help="GPUs (processes) of the job; 0 or 1: one plain process")
    p.add_argument("--accelerate", default="ddp", help="accelerate config name for gpus > 1: $ATP_ACCELERATE_CONFIGS/<name>.yaml")
    p.add_argument("module", help="the module to run, e.g. atp.stages.sft")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the module's arguments")
    args = p.parse_args(argv)
    try:
        argv_ = command(args.module, args.args, args.gpus, args.accelerate)
    except ConfigError as exc:
        p.exit(2, f"error: {exc}\n")
    sys.stdout.flush()
    # The job's process becomes the stage (or accelerate's launcher): signals and the exit status pass through.
    os.execv(argv_[0], argv_)


if __name__ == "__main__":
    main()
