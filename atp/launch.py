"""What a training stage checks about how it was launched (torchrun, accelerate launch, or plain python).

The stages do their own data parallelism (torch DDP in atp/train.py, an explicit gradient all-reduce in
the RL update) and never call accelerate's Accelerator, so accelerate is only a process launcher here.
An accelerate config that asks for more than that (FSDP, DeepSpeed, Megatron-LM) would be silently
ignored: the stages refuse it instead, before loading anything.
"""

from __future__ import annotations

import logging
import os

from atp.config import ConfigError

log = logging.getLogger(__name__)
UNSUPPORTED = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


def check_launch(environ: dict | None = None) -> None:
    """Raise ConfigError when accelerate was asked for sharding the stages do not do; warn about its precision setting."""
    environ = os.environ if environ is None else environ
    for key, name in UNSUPPORTED.items():
        if environ.get(key, "false").lower() in ("true", "1", "yes"):
            raise ConfigError(
                f"launched with an accelerate {name} config ({key}={environ[key]}): the training stages run data-parallel "
                f"(DDP) only; launch with workflow/accelerate/ddp.yaml (the train rule's default, resources.accelerate=ddp) "
                f"or torchrun. See workflow/accelerate/fsdp.yaml for what {name} support would need"
            )
    precision = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision not in ("no", ""):
        log.warning("accelerate's mixed_precision=%s is ignored: precision is the config's train.bf16 (autocast in the stages)", precision)
