"""Which device a command runs on: one rule for training, text caching and benchmarks."""
from __future__ import annotations

import torch

from .config import ConfigError


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device rule (``train.device``, ``--device``): ``auto`` is this rank's GPU when
    there is one, else the CPU; ``cuda`` is this rank's GPU; ``cuda:N`` and ``cpu`` as given."""
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: torch sees no CUDA device; use cpu")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if device.startswith("cuda:"):
        return torch.device(device)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def idle_core_threads(current: int, cpus: int, load: float) -> int:
    """Intra-op threads for CPU work on a shared machine: the idle cores, at least 1, at most
    torch's setting.

    On a busy machine extra OpenMP threads mostly spin at barriers waiting for descheduled
    siblings: on a 2-core machine at load 4, 1 thread encoded text ~1.5x faster than 2, and at
    load 9 a tiny BLIP took 5x the CPU time with 2 threads that it took with 1.
    """
    return max(1, min(current, int(round(cpus - load))))


def fit_threads_to_idle_cores() -> int:
    """Set torch's intra-op threads to :func:`idle_core_threads` of this machine; returns them."""
    import os

    if hasattr(os, "getloadavg"):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(idle_core_threads(torch.get_num_threads(), cpus, os.getloadavg()[0]))
    return torch.get_num_threads()
