"""Which vector of a frozen backbone a probe sees: each backbone family's own standard.

- ``patch_mean``: average-pooled patch tokens (I-JEPA, TC-JEPA, the paper's VISSL recipe);
  ``:last1`` the last block, ``:last4`` the concatenation over the last four blocks.
- ``cls_patch_mean``: DINOv2's linear protocol, the class token(s) concatenated with the
  average-pooled patch tokens of the last block; ``:last1`` one class token, ``:last4`` the
  class tokens of the last four blocks (DINOv2's ``n_last_blocks=4``).
- ``map``: SigLIP/SigLIP2's attention-pooling (MAP) head output (one vector, ``:last1``).

Extraction stores, per image, the arrays :func:`pooled_arrays` returns (``last1``, ``last4``,
``global``, and ``cls4`` when the backbone has a class token); a protocol is a view of
them (:func:`feature_array`), so every protocol of one cache trains in the same pass.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from evals.backbones.base import UserError

PROTOCOLS = ("patch_mean", "cls_patch_mean", "map")
LAYERS = ("last1", "last4")


def pooled_arrays(patches: Sequence[torch.Tensor], global_vector: torch.Tensor,
                  class_tokens: Optional[Sequence[torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Per-image arrays to cache from one forward pass: ``patches`` (B, h, w, C) of the last
    blocks (oldest first), the backbone's global vector (B, C), its class tokens (B, C) of the
    same blocks or None."""
    pooled = [g.float().mean(dim=(1, 2)) for g in patches]
    arrays = {"last1": pooled[-1], "last4": torch.cat(pooled, dim=-1), "global": global_vector.float()}
    if class_tokens is not None:
        arrays["cls4"] = torch.cat([t.float() for t in class_tokens], dim=-1)
    return arrays


def protocol_names(protocol: str) -> list[str]:
    """'cls_patch_mean' -> its layer variants; 'patch_mean:last4' stays itself."""
    name, _, layers = protocol.partition(":")
    if name not in PROTOCOLS:
        raise UserError(f"unknown feature protocol {protocol!r}; known: {', '.join(PROTOCOLS)} "
                        f"(optionally :{' or :'.join(LAYERS)})")
    if layers and layers not in LAYERS:
        raise UserError(f"feature protocol {protocol!r}: layers must be one of {LAYERS}")
    if name == "map":
        if layers == "last4":
            raise UserError("feature protocol 'map' is the pooling head's one output; there is no map:last4")
        return ["map:last1"]
    return [protocol] if layers else [f"{name}:{layer}" for layer in LAYERS]


def available_protocols(info: dict) -> list[str]:
    """Protocols a backbone (its ``protocol_info()``) supports."""
    names = ["patch_mean"]
    if info.get("has_class_token"):
        names.append("cls_patch_mean")
    if "MAP" in str(info.get("global_vector", "")):
        names.append("map")
    return names


def resolve_features(requested: Optional[Sequence[str]], info: dict) -> list[str]:
    """The feature sets to sweep: the backbone's default protocol when nothing is requested,
    'all' for every protocol it supports; each with its layer variants."""
    available = available_protocols(info)
    if not requested:
        requested = [info.get("default_features", "patch_mean")]
    elif list(requested) == ["all"]:
        requested = available
    names = []
    for protocol in requested:
        base = protocol.partition(":")[0]
        variants = protocol_names(protocol)
        if base not in available:
            raise UserError(f"feature protocol {base!r} does not apply to backbone {info.get('backbone')} "
                            f"(it has {', '.join(available)})")
        names += [v for v in variants if v not in names]
    return names


class ConcatColumns:
    """Arrays side by side, read lazily: ``view[rows]`` reads only those rows of each part, so
    a memory-mapped cache is never concatenated as a whole."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.shape = (len(self.parts[0]), sum(p.shape[1] for p in self.parts))
        self.dtype = np.result_type(*(p.dtype for p in self.parts))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return np.concatenate([np.asarray(p[rows]) for p in self.parts], axis=1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)


class LastColumns:
    """The last ``width`` columns of an array, read lazily like :class:`ConcatColumns`."""

    def __init__(self, array, width: int):
        self.array, self.width = array, width
        self.shape, self.dtype = (len(array), width), array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.array[rows])[:, -self.width:]


def feature_array(arrays, name: str):
    """The (N, D) rows of feature set ``name`` from a feature cache's arrays (anything with
    ``get(array name)``): a cached array itself, or a lazy view for the class-token protocol.
    Legacy names 'last1', 'last4', 'global' pass through."""
    if name in ("last1", "last4", "global"):
        return arrays.get(name)
    protocol, _, layers = name.partition(":")
    if protocol == "patch_mean" and layers in LAYERS:
        return arrays.get(layers)
    if protocol == "map":
        return arrays.get("global")
    if protocol == "cls_patch_mean" and layers in LAYERS:
        cls4 = arrays.get("cls4")
        if cls4 is None:
            raise UserError("this feature cache holds no class tokens; extract it with a backbone that has one")
        patch_mean = arrays.get("last1")
        tokens = LastColumns(cls4, patch_mean.shape[1]) if layers == "last1" else cls4
        return ConcatColumns([tokens, patch_mean])
    raise UserError(f"unknown feature set {name!r}")


def describe(name: str) -> str:
    """One line recorded with results: what the vector of feature set ``name`` is."""
    protocol, _, layers = name.partition(":")
    blocks = "the last block" if layers == "last1" else "each of the last 4 blocks"
    return {
        "patch_mean": f"average-pooled patch tokens of {blocks} (after the final norm), concatenated",
        "cls_patch_mean": f"class token of {blocks} concatenated with the average-pooled patch tokens of the last block",
        "map": "attention-pooling (MAP) head output",
    }.get(protocol, name)
