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
