"""torchrun process groups, DDP / FSDP2 wrapping, and plain state dicts for checkpoints.

Single-process runs (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never create a process group and
every helper here is a no-op for them. State dicts go through
``torch.distributed.checkpoint.state_dict`` in every mode, so a checkpoint holds parameter
names without wrapper prefixes (``module.``, ``_orig_mod.``) and optimizer state keyed by
parameter name: a run saved under FSDP resumes under DDP or on one device, and vice versa.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device

log = logging.getLogger(__name__)

# Submodule lists that hold transformer blocks (timm ViT: blocks; HF: layers / encoder.layer).
_BLOCK_LIST_NAMES = ("blocks", "layers", "layer")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _free_port() -> int:
    """A TCP port free right now: a fixed one collides with any other local run doing the same."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(device: str = "auto", group_of_one: bool = False) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) from RANK / WORLD_SIZE /
    LOCAL_RANK; a plain single process when those are absent. ``group_of_one`` makes a
    group even for one process (``benchmarks.train_step --fsdp``: FSDP2's hooks need one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if (world_size > 1 or group_of_one) and not dist.is_initialized():
        if world_size == 1:  # nobody launched us: a local rendezvous for the group of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {missing} unset: launch multi-process runs with torchrun"
            )
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev, rank=rank, world_size=world_size)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (gloo has no AVG op, so SUM then divide); returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order (e.g. per-rank RNG states for a checkpoint)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- wrapping


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Children of every ``blocks`` / ``layers`` / ``layer`` module list, outermost first."""
    found = []
    for name, sub in module.named_modules():
        if name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES and isinstance(sub, (nn.ModuleList, nn.Sequential)):
            found.extend(sub.children())
    return found


def wrap_model(
    module: nn.Module,
    mode: Literal["none", "ddp", "fsdp"],
    device: torch.device,
    *,
    param_dtype: Optional[torch.dtype] = None,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Move ``module`` to ``device`` and wrap it for data parallelism.

    ``ddp``: ``DistributedDataParallel`` (averages gradients across ranks).
    ``fsdp``: FSDP2 ``fully_shard`` on each transformer block, then on the root, in place; the
    module stays the same object with DTensor parameters. ``param_dtype`` (e.g. bf16) sets
    FSDP2's mixed-precision compute dtype, gradients are reduced in fp32.
    Frozen submodules (e.g. the EMA target encoder) should not be wrapped with ddp.
    """
    module = module.to(device)
    if mode == "none":
        return module
    if not (dist.is_available() and dist.is_initialized()):
        # A process group of one (benchmarks.train_step --fsdp) still wraps: every hook runs.
        log.warning("train.distributed=%s in a single process: leaving the model unwrapped", mode)
        return module
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if mode == "fsdp":
        return shard_fsdp2(module, param_dtype)
    raise ValueError(f"train.distributed={mode!r}: expected none, ddp or fsdp")


def shard_fsdp2(module: nn.Module, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """FSDP2 ``fully_shard`` on each transformer block, then on the root, in place. Needs a
    process group; with a group of one (``benchmarks.train_step --fsdp``) nothing is split but
    every FSDP2 hook, all-gather and reduce-scatter still runs."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in transformer_blocks(module):
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (FSDP2 shards in place)."""
    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def is_sharded(module: nn.Module) -> bool:
    module = unwrap(module)
    return isinstance(module, FSDPModule) or any(isinstance(p, DTensor) for p in module.parameters())


@contextlib.contextmanager
def unsharded(module: nn.Module):
    """All-gather the root FSDP2 module's own parameters for the ``with`` body (a collective:
    every rank must enter it). FSDP2 gathers a module's parameters only in the hooks around its
    ``forward``; code that calls other methods of the model (``JEPA.targets`` / ``predict``)
    would otherwise meet DTensor shards in the root's layers (patch embedding, norms). Blocks
    sharded on their own still gather themselves when called. A no-op when not sharded."""
    module = unwrap(module)
    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


# ----------------------------------------------------------------------------- state dicts


def _copy_containers(obj):
    """New dicts / lists around the same tensors: the DCP setters replace entries of the dict
    they are given with local shards, which must not leak into the caller's checkpoint."""
    if isinstance(obj, dict):
        return type(obj)((k, _copy_containers(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_copy_containers(v) for v in obj]
    return obj


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU state dict without wrapper prefixes. Under FSDP this is a collective:
    call it on every rank; rank 0 gets the tensors, the other ranks an empty dict."""
    module = unwrap(module)
    if is_sharded(module):
        return get_model_state_dict(module, options=_FULL)
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_model_state_dict(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a full state dict (as ``model_state_dict`` returns, given on every rank)."""
    module = unwrap(module)
    if is_sharded(module):
        set_model_state_dict(module, _copy_containers(state), options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        module.load_state_dict(state, strict=strict)


def optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter name (relative to ``module``, which must own every
    parameter the optimizer updates). Collective under FSDP; rank 0 gets the state."""
    return get_optimizer_state_dict(unwrap(module), optimizer, options=_FULL)


def load_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of ``optimizer_state_dict``; ``state`` given on every rank."""
    module = unwrap(module)
    # For unsharded modules the full and the local layout coincide; the local path also works
    # on an optimizer that has not stepped yet.
    options = StateDictOptions(full_state_dict=is_sharded(module))
    set_optimizer_state_dict(module, optimizer, _copy_containers(state), options=options)
