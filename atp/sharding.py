"""FSDP (torch's fully_shard, "FSDP2") for the SFT training loop in atp/train.py.

The loop trains a sharded deep copy of the caller's model: every transformer decoder layer (the
backbone's of an SFT model, through a LoRA wrapper too, and the step decoder's of a latent model) is
one FSDP unit and the rest belongs to the root unit. A latent model's backbone layers stay in the root
unit (LatentReasoner.shared_cache_layers): the latent loop calls each of them once per slot and once for
the suffix through one KV cache, so a later call's backward sends gradients into an earlier call's key
and value projections after FSDP has already resharded the layer (fully_shard per layer fails there:
"setStorage: ... out of bounds for storage of size 0"), and its gradient reduction could miss them.
The root unit is gathered once per forward and reduced once, after the whole backward pass: the
latent backbone's parameters are whole on every device during a step, sharded between steps, and its
gradients and optimizer state are sharded.

The caller's plain model waits on the CPU and receives the trained weights at the end, so the stages
validate and save it as they do after a DDP or 1-process run.

Every function here that gathers (full_state, load_full_state, optimizer_state) is a collective:
every process must call it, in the same order.
"""

from __future__ import annotations

import copy

import torch


def is_decoder_layer(module: torch.nn.Module) -> bool:
    """The unit FSDP shards on its own: a transformers decoder layer (LlamaDecoderLayer, ...)."""
    return type(module).__name__.endswith("DecoderLayer")


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A deep copy of `model` (left untouched), fully sharded over all processes on `device`'s type.

    fully_shard moves each unit's parameters to the device as it shards them, so the copy may be
    made on the CPU: the device then never holds more than one unsharded layer of it at a time.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    sharded = copy.deepcopy(model)
    layers = [m for m in sharded.modules() if is_decoder_layer(m)]
    if not layers:
        raise ValueError(f"FSDP: no decoder layer (a module whose class name ends with 'DecoderLayer') in {type(model).__name__}")
    shared = {id(m) for m in sharded.shared_cache_layers()} if hasattr(sharded, "shared_cache_layers") else set()
    for layer in (m for m in layers if id(m) not in shared):
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    return sharded


def _full(value):
    """The whole tensor of a (possibly sharded) parameter or buffer, on the CPU (a collective for a sharded one)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().to("cpu")


def full_state(sharded: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """The full state dict of `sharded` on the CPU, keyed as the plain model's (fully_shard keeps the names).

    Gathered one tensor at a time, so the device holds one whole tensor at most. Every process takes
    part; only those with `keep` hold (and get back) the result, the others get None.
    """
    state = {}
    for name, value in sharded.state_dict().items():
        full = _full(value)
        if keep:
            state[name] = full.contiguous().clone()
    return state if keep else None


def load_full_state(model: torch.nn.Module, sharded: torch.nn.Module) -> None:
    """Copy the trained weights of `sharded` into the plain `model` (same names), on every process."""
    target = model.state_dict()
    source = sharded.state_dict()
    if list(target) != list(source):
        raise RuntimeError("FSDP: the sharded copy's state dict does not match the model's")
    with torch.no_grad():
        for name, value in source.items():
            target[name].copy_(_full(value))


def optimizer_state(sharded: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state (keyed by parameter names), on process 0 only ({} elsewhere): a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(sharded, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(sharded: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore a full optimizer state saved by optimizer_state (every process passes the whole of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(sharded, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
