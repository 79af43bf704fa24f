"""Finding and reading weights, and loading them strictly.

Weights come from a local file or folder, or a hub id already in the local Hugging Face
cache; nothing is downloaded. Every load checks keys and shapes itself and fails with the
full list of differences: a partial load would silently evaluate random layers.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .base import CheckpointError, UserError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")


def resolve_weights(weights: str | os.PathLike | None, backbone: str) -> Path:
    """A local path, or the snapshot folder of a hub id (``org/name``) in the local HF cache."""
    if weights is None:
        raise UserError(f"backbone {backbone!r} needs --weights PATH (a local file/folder or a cached hub id)")
    path = Path(weights).expanduser()
    if path.exists():
        return path
    text = str(weights)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise UserError(
                f"{text}: no such file, and no hub snapshot of that id in the local cache "
                f"(downloads are off; fetch it once with `huggingface-cli download {text}` or pass a local path)"
            ) from None
    raise UserError(f"{weights}: no such file or folder")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read JSON ({e})") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from one file, or from the weights of an HF/timm folder.

    Torch files load with ``weights_only=True``: no code from a checkpoint ever runs.
    """
    path = Path(path)
    if path.is_dir():
        return read_folder_weights(path)
    if path.name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; the file is the user's to fix
        raise CheckpointError(
            f"{path}: cannot load with torch.load(weights_only=True) ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, a sharded safetensors index, or pytorch_model.bin, in that order."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    legacy = folder / "pytorch_model.bin"
    if single.exists():
        return read_state_dict(single)
    if index.exists():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(folder / shard))
        return state
    if legacy.exists():
        return read_state_dict(legacy)
    raise UserError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` when every key carries it (DDP's ``module.``); otherwise unchanged."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys: Iterable[str], limit: int = 30) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def key_mismatch_message(
    source: str, missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str] = (), hint: str = ""
) -> str | None:
    missing, unexpected, shapes = sorted(missing), sorted(unexpected), sorted(shapes)
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{source}: weights do not match the model"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_listing(shapes, 10)}")
    if hint:
        parts.append(hint)
    return "; ".join(parts)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """``module.load_state_dict(state, strict=True)`` with every difference listed up front."""
    expected = module.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    message = key_mismatch_message(source, missing, unexpected, shapes, hint)
    if message:
        raise CheckpointError(message)
    module.load_state_dict(state, strict=True)


@contextmanager
def quiet_transformers():
    """transformers prints a load report table on every mismatch; we raise our own error."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def hf_from_pretrained_strict(model_cls, folder: Path, ignore_prefixes: tuple[str, ...] = (), **kwargs):
    """``model_cls.from_pretrained`` from a local folder, failing on any key difference.

    transformers maps legacy key names itself, so its own loading report is the reference;
    ``ignore_prefixes`` names towers deliberately left out (e.g. the text tower of a full
    SigLIP checkpoint when only the vision model is evaluated).
    """
    with quiet_transformers():
        try:
            model, info = model_cls.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, **kwargs
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{folder}: {model_cls.__name__} cannot load it ({str(e).splitlines()[0]})") from None
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(ignore_prefixes)]
    shapes = [str(m) for m in info.get("mismatched_keys", ())]
    message = key_mismatch_message(str(folder), info["missing_keys"], unexpected, shapes)
    if message:
        raise CheckpointError(message)
    return model.float().eval()
