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

from evals.backbones.base import CheckpointError
from evals.distributed import World
from tcjepa.train.checkpoint import load_checkpoint, save_checkpoint
from tcjepa.train.rng import capture_rng_state, restore_rng_state

CHECKPOINT_NAME = "head_last.pt"


def autocast(device: str):
    """bf16 autocast on CUDA (where the backbone's matmuls are); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def data_parallel(module: nn.Module, world: World, device: str, find_unused: bool = False) -> nn.Module:
    """``module`` in DDP when there are several ranks (BatchNorm synchronised on CUDA).
    ``find_unused``: some parameters may get no gradient in a step (a detector's mask head
    on a batch without positive RoIs)."""
    if world.size == 1:
        return module
    if torch.device(device).type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[torch.device(device).index],
                                                   find_unused_parameters=find_unused)
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused)


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
    """Save every ``every`` steps (and at the end) into ``folder``; ``None`` folder: never.

    Weights under ``frozen_prefix`` (a frozen backbone inside the trained module) are left
    out: they are the pretrained ones, and for a ViT-H they would be a gigabyte per save."""

    def __init__(self, folder: Optional[str | Path], every: int, world: World, frozen_prefix: Optional[str] = None):
        self.path = Path(folder) / CHECKPOINT_NAME if folder else None
        self.every, self.world, self.frozen_prefix = max(int(every), 1), world, frozen_prefix

    def _trained_weights(self, head: nn.Module) -> dict:
        state = unwrap(head).state_dict()
        return {k: v for k, v in state.items() if not (self.frozen_prefix and k.startswith(self.frozen_prefix))}

    def _load_weights(self, head: nn.Module, weights: dict) -> None:
        if not self.frozen_prefix:
            unwrap(head).load_state_dict(weights)
            return
        missing, unexpected = unwrap(head).load_state_dict(weights, strict=False)
        wrong = unexpected + [k for k in missing if not k.startswith(self.frozen_prefix)]
        if wrong:
            raise CheckpointError(f"{self.path}: does not fit this head (keys {wrong[:5]}); "
                                  "drop --resume or use another --out")

    def restore(self, head: nn.Module, optimizer, scheduler, generator: Optional[torch.Generator],
                rng: Optional[random.Random]) -> int:
        """Load the saved state into the given objects; returns the step to continue from (0: fresh).
        Each rank gets back its own random streams (a run resumed on another number of ranks
        gets rank 0's and says so)."""
        if self.path is None or not self.path.exists():
            return 0
        state = load_checkpoint(self.path)
        self._load_weights(head, state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        streams = state["random_streams"]
        if len(streams) != self.world.size:
            print(f"{self.path}: saved by {len(streams)} rank(s), resumed on {self.world.size}: "
                  "every rank continues rank 0's random streams")
        mine = streams[self.world.rank] if len(streams) == self.world.size else streams[0]
        if generator is not None:
            generator.set_state(mine["generator"])
        if rng is not None:
            version, internal, gauss = mine["python_rng"]
            rng.setstate((version, tuple(internal), gauss))
        restore_rng_state(mine["global_rng"])
        return int(state["step"])

    def maybe_save(self, step: int, total: int, head: nn.Module, optimizer, scheduler,
                   generator: Optional[torch.Generator], rng: Optional[random.Random]) -> None:
        """After ``step`` steps are done, when it is time: gather every rank's random streams
        (call on all ranks) and save on rank 0."""
        if self.path is None or (step % self.every and step != total):
            return
        version, internal, gauss = rng.getstate() if rng is not None else (0, (), None)
        stream = {"generator": generator.get_state() if generator is not None else torch.zeros(0, dtype=torch.uint8),
                  "python_rng": [version, list(internal), gauss], "global_rng": capture_rng_state()}
        streams = [stream]
        if self.world.size > 1:
            streams = [None] * self.world.size
            dist.all_gather_object(streams, stream)
        if self.world.is_main:
            save_checkpoint(self.path, {
                "step": step, "head": self._trained_weights(head), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "random_streams": streams,
            })
