"""The parts of a training checkpoint, each owning its top-level keys.

The ``Checkpointer`` (``checkpoint.py``) saves a run as the union of its parts' ``state_dict()``
and hands the loaded file back to each part's ``load_state_dict``. Anything with those two
methods and a ``keys`` tuple can be a part.
"""
from __future__ import annotations

from typing import Any, Protocol

from .distributed import (
    all_gather_objects,
    load_model_state_dict,
    load_optimizer_state_dict,
    model_state_dict,
    optimizer_state_dict,
)
from .rng import capture_rng_state, restore_rng_state

MODEL_PARTS = ("encoder", "predictor", "target_encoder")  # I-JEPA's checkpoint keys


class Stateful(Protocol):
    """A part of a training checkpoint: ``state_dict()`` returns the top-level keys it owns."""

    keys: tuple[str, ...]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ModelWeights:
    """The three networks of a JEPA, by I-JEPA's keys. Collective under FSDP (every rank
    gathers, rank 0 gets the tensors)."""

    keys = MODEL_PARTS

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        full = model_state_dict(self.model)
        return {part: {k[len(part) + 1:]: v for k, v in full.items() if k.startswith(part + ".")}
                for part in MODEL_PARTS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state_dict(self.model, {f"{part}.{k}": v for part in MODEL_PARTS for k, v in state[part].items()})


class OptimizerState:
    """AdamW's state keyed by parameter name, so a run resumes under another parallelism."""

    keys = ("opt",)

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"opt": optimizer_state_dict(self.model, self.optimizer), "scaler": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_optimizer_state_dict(self.model, self.optimizer, state["opt"])


class Keyed:
    """An object with its own ``state_dict`` (the sampler) stored under one key."""

    def __init__(self, key: str, obj):
        self.keys, self.obj = (key,), obj

    def state_dict(self) -> dict[str, Any]:
        return {self.keys[0]: self.obj.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obj.load_state_dict(state[self.keys[0]])


class RNGStates:
    """Every rank's random streams; a run resumed on another number of ranks restarts each
    rank from rank 0's."""

    keys = ("rng",)

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    def state_dict(self) -> dict[str, Any]:
        return {"rng": all_gather_objects(capture_rng_state())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        restore_rng_state(rng[self.rank] if len(rng) == self.world_size else rng[0])
