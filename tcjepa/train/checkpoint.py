"""Training checkpoints: atomic save, safe load, exact resume.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers, strings,
lists, tuples, dicts), so it always loads with ``torch.load(weights_only=True)``: loading never
runs code from the file. Keys follow I-JEPA (``encoder``, ``predictor``, ``target_encoder``,
``opt``, ``scaler``, ``epoch``) plus ``config``, ``step``, ``rng``, ``sampler``, ``ema_momentum``
and any other plain value.

Files are written to a temp file in the same folder, fsynced, then renamed over the target, so
a crash mid-write leaves the previous checkpoint intact. A run folder holds
``checkpoint-{step:08d}.pt`` files and a ``latest`` text file naming the newest one.

A checkpoint that fails to load is an error (``CheckpointError``), never a silent restart; the
one exception is ``find_resume_checkpoint``, which skips a *corrupted* newest file (a crash
during a write to a filesystem without atomic rename, a truncated copy) with a warning.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

LATEST_POINTER = "latest"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
_PICKLE_OPT_IN = "train.allow_pickle=true (tcjepa-train) or --allow-pickle (tcjepa-export)"

# Exactly the types torch's weights_only unpickler rebuilds (checked against torch 2.14).
# Exact type match, not isinstance: numpy.float64 is a float subclass but pickles as a numpy
# global, which weights_only refuses.
_SAFE_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)
_SAFE_TENSORS = (torch.Tensor, torch.nn.Parameter)
_SAFE_MAPPINGS = (dict, collections.OrderedDict)
_SAFE_SEQUENCES = (list, tuple, set)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


# ----------------------------------------------------------------------------- safety check


def find_unsafe_value(value: Any, where: str = "state") -> Optional[str]:
    """Path and type of the first value ``torch.load(weights_only=True)`` would refuse, or None."""
    kind = type(value)
    if kind in _SAFE_SCALARS:
        return None
    if kind in _SAFE_TENSORS:
        return None
    if kind in _SAFE_MAPPINGS:
        for k, v in value.items():
            bad = find_unsafe_value(k, f"{where} (key {k!r})") or find_unsafe_value(v, f"{where}[{k!r}]")
            if bad:
                return bad
        return None
    if kind in _SAFE_SEQUENCES:
        for i, v in enumerate(value):
            bad = find_unsafe_value(v, f"{where}[{i}]")
            if bad:
                return bad
        return None
    return f"{where}: {kind.__module__}.{kind.__qualname__}"


def _check_weights_only_safe(state: dict, path: Path) -> None:
    if type(state) not in _SAFE_MAPPINGS:
        raise CheckpointError(f"{path}: checkpoint state must be a dict, got {type(state).__name__}")
    bad = find_unsafe_value(state)
    if bad:
        raise CheckpointError(
            f"{path}: not saved, {bad} would not load with torch.load(weights_only=True). "
            "Store plain data only: tensors, int/float/bool/str/None, lists, tuples, dicts "
            "(convert numpy values with .item() / torch.from_numpy, dataclasses with asdict)."
        )


# ----------------------------------------------------------------------------- save / load


def _serialize(state: dict, f: BinaryIO) -> None:
    torch.save(state, f)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse to open a folder, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically; refuse values that would not load with weights_only=True."""
    path = Path(path)
    _check_weights_only_safe(state, path)
    atomic_write(path, lambda f: _serialize(state, f))


def _is_weights_only_refusal(err: BaseException) -> bool:
    return isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower()


def _refusal_reason(err: BaseException) -> str:
    # torch's message wraps the one useful line (which global was refused) in advice.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "unsupported" in ln.lower():
            return ln.rstrip(".")
    return lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """Load a checkpoint onto the CPU with ``weights_only=True``.

    A file that needs a full unpickle (it could run arbitrary code) is refused unless
    ``allow_pickle`` is set; a truncated or corrupted file raises ``CheckpointError``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes a CheckpointError naming the file
        if not _is_weights_only_refusal(e):
            raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupted?): {e}") from e
        reason = _refusal_reason(e)
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: refused to load, the file holds Python objects that only a full unpickle "
                f"can rebuild, and unpickling runs code stored in the file ({reason}). If you trust "
                f"this file, opt in with {_PICKLE_OPT_IN}."
            ) from None
        log.warning("%s: loading with a full unpickle (allow_pickle); only do this for trusted files", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read checkpoint even with allow_pickle: {e2}") from e2
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of training state, got {type(state).__name__}")
    return state


# ----------------------------------------------------------------------------- run folders


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-*.pt`` in ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _read_latest(out_dir: Path) -> Optional[Path]:
    pointer = out_dir / LATEST_POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    target = out_dir / name
    # The pointer only ever names a file in the same folder.
    if not name or "/" in name or not target.is_file():
        log.warning("%s names %r, which is not a checkpoint file; ignoring it", pointer, name)
        return None
    return target


def _looks_intact(path: Path) -> Optional[str]:
    """None if the zip container and every member's CRC check out, else the reason.

    Reads the whole file but unpickles nothing, so it is safe and cheap next to a real load.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return str(e) or type(e).__name__
    return f"member {bad} fails its CRC check" if bad else None


def find_resume_checkpoint(out_dir: str | Path) -> Optional[Path]:
    """Newest intact checkpoint in ``out_dir`` (the ``latest`` pointer first, then by step).

    Corrupted files are skipped with a warning; None when the folder holds no checkpoint.
    """
    out_dir = Path(out_dir)
    candidates = [p for _, p in reversed(list_checkpoints(out_dir))]
    latest = _read_latest(out_dir)
    if latest is not None:
        candidates = [latest] + [p for p in candidates if p != latest]
    for p in candidates:
        reason = _looks_intact(p)
        if reason is None:
            return p
        log.warning("%s is corrupted (%s); falling back to the previous checkpoint", p, reason)
    if candidates:
        raise CheckpointError(
            f"{out_dir}: every checkpoint is corrupted ({', '.join(p.name for p in candidates)}); "
            "delete them or set train.resume=none to start over"
        )
    return None


def resolve_resume(resume: str, out_dir: str | Path) -> Optional[Path]:
    """``train.resume``: 'auto' = newest intact checkpoint in out_dir (or None), 'none', or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        return find_resume_checkpoint(out_dir)
    path = Path(resume)
    if path.is_dir():
        found = find_resume_checkpoint(path)
        if found is None:
            raise CheckpointError(f"train.resume={resume}: the folder holds no checkpoint-*.pt")
        return found
    if not path.is_file():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint file")
    return path


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints (keep <= 0 keeps all).

    The file ``latest`` points to is never deleted. Returns the deleted paths.
    """
    if keep <= 0:
        return []
    out_dir = Path(out_dir)
    latest = _read_latest(out_dir)
    ckpts = list_checkpoints(out_dir)
    deleted = []
    for _, p in ckpts[: max(0, len(ckpts) - keep)]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        p.unlink(missing_ok=True)
        deleted.append(p)
    return deleted


def save_run_checkpoint(out_dir: str | Path, step: int, state: dict, keep: int = 0) -> Path:
    """Save ``checkpoint-{step:08d}.pt`` in ``out_dir``, point ``latest`` at it, prune to ``keep``."""
    out_dir = Path(out_dir)
    path = out_dir / checkpoint_name(step)
    save_checkpoint(path, state)
    atomic_write(out_dir / LATEST_POINTER, lambda f: f.write(f"{path.name}\n".encode()))
    prune_checkpoints(out_dir, keep)
    return path


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """Torch CPU (+ every CUDA device), numpy and python RNG states as weights_only-safe data."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state``; CUDA states are restored for the devices both sides have."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d", len(cuda), n)
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu(), i)
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
