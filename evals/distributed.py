"""The few distributed facts the evaluations need: who am I, how many are we, wait for all.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_from_env` joins the
process group: NCCL when the evaluation runs on CUDA, gloo otherwise (CPU tests, CPU-only
machines). Without ``torchrun`` everything is a world of one and nothing is initialised,
so the single-process path is the same code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.barrier()


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init_from_env(device: str = "cpu") -> tuple[World, str]:
    """Join the torchrun process group if there is one; returns (world, this rank's device).

    ``device='cuda'`` becomes ``cuda:<LOCAL_RANK>``: each rank drives its own GPU.
    """
    on_cuda = torch.device(device).type == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The project's one process-group entry (nccl on this rank's GPU, else gloo), as training's.
        from tcjepa.train.distributed import init_distributed

        init_distributed("cuda" if on_cuda else "cpu")
    world = current_world()
    if on_cuda and world.size > 1:
        device = f"cuda:{world.local_rank}"
    return world, device


def shard(items: range | list, world: World) -> list:
    """This rank's items: every ``size``-th one starting at ``rank``. No padding, no
    duplicates; the union over ranks is exactly ``items``."""
    return list(items)[world.rank::world.size]
