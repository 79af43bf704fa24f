"""What the pure-torch head-training loops share at scale: bf16 autocast on GPU, DDP over
the torchrun ranks, and a resumable checkpoint of the head's training state.

The checkpoint (``<work_dir>/head_last.pt``) holds the head, optimizer, scheduler, step and
every random state the loop draws from, written atomically by rank 0 and read back with
``weights_only=True``; a rerun with the same work dir continues from it (what mmengine's
``resume=True`` does for the mm engines), and ends with the head an uninterrupted run gets.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from evals.distributed import World
from tcjepa.train.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint

CHECKPOINT_NAME = "head_last.pt"


def autocast(device: str):
    """bf16 autocast on CUDA (where the backbone's matmuls are); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def data_parallel(module: nn.Module, world: World, device: str) -> nn.Module:
    """``module`` in DDP when there are several ranks (BatchNorm synchronised on CUDA)."""
    if world.size == 1:
        return module
    if torch.device(device).type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[torch.device(device).index])
    return nn.parallel.DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_reduce_sum(tensor: torch.Tensor, world: World, device: str = "cpu") -> torch.Tensor:
    """Sum over ranks, on ``device`` (NCCL reduces only CUDA tensors); returned on the
    tensor's own device. The identity for one process."""
    if world.size == 1:
        return tensor
    reduced = tensor.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


class HeadCheckpoint:
    """Save every ``every`` steps (and at the end) into ``folder``; ``None`` folder: never."""

    def __init__(self, folder: Optional[str | Path], every: int, world: World):
        self.path = Path(folder) / CHECKPOINT_NAME if folder else None
        self.every, self.world = max(int(every), 1), world

    def restore(self, head: nn.Module, optimizer, scheduler, generator: Optional[torch.Generator],
                rng: Optional[random.Random]) -> int:
        """Load the saved state into the given objects; returns the step to continue from (0: fresh)."""
        if self.path is None or not self.path.exists():
            return 0
        state = load_checkpoint(self.path)
        unwrap(head).load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if generator is not None:
            generator.set_state(state["generator"])
        if rng is not None:
            version, internal, gauss = state["python_rng"]
            rng.setstate((version, tuple(internal), gauss))
        restore_rng_state(state["global_rng"])
        return int(state["step"])

    def maybe_save(self, step: int, total: int, head: nn.Module, optimizer, scheduler,
                   generator: Optional[torch.Generator], rng: Optional[random.Random]) -> None:
        """After ``step`` steps are done: save on rank 0 when it is time."""
        if self.path is None or not self.world.is_main or (step % self.every and step != total):
            return
        version, internal, gauss = rng.getstate() if rng is not None else (0, (), None)
        save_checkpoint(self.path, {
            "step": step, "head": unwrap(head).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state() if generator is not None else torch.zeros(0, dtype=torch.uint8),
            "python_rng": [version, list(internal), gauss], "global_rng": capture_rng_state(),
        })
