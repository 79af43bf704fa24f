"""Training checkpoints: the ``Checkpointer``, atomic save, safe load, exact resume.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers, strings,
lists, tuples, dicts), so it always loads with ``torch.load(weights_only=True)``: loading never
runs code from the file. Keys follow I-JEPA (``encoder``, ``predictor``, ``target_encoder``,
``opt``, ``scaler``, ``epoch``) plus ``config``, ``step``, ``rng``, ``sampler``, ``ema_momentum``
and ``history``. The ``Checkpointer`` is the one place that knows them: each key belongs to a
part with ``state_dict`` / ``load_state_dict`` (the model's weights, the optimizer, the sampler,
the RNG streams, the trainer's progress).

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
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import torch

from ..errors import CheckpointError, TrainingError, UserError

if TYPE_CHECKING:
    from .checkpoint_parts import Stateful

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "Checkpointer"]  # plus the file helpers below

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


# ----------------------------------------------------------------------------- the Checkpointer

class Checkpointer:
    """A run folder's training checkpoints: ``save(step)`` writes every part (all ranks take
    part in the collectives, the main rank writes), ``resume(setting)`` finds and checks a
    checkpoint and loads every part back; ``last`` is the newest good checkpoint."""

    def __init__(self, out_dir: str | Path, parts: list["Stateful"], *, config: dict, keep: int = 0,
                 allow_pickle: bool = False, is_main: bool = True):
        self.out_dir, self.parts, self.config = Path(out_dir), parts, config
        self.keep, self.allow_pickle, self.is_main = keep, allow_pickle, is_main
        self.last: Optional[Path] = None

    def state_dict(self) -> Optional[dict[str, Any]]:
        """The checkpoint's contents on the main rank (None elsewhere); every rank calls it."""
        states = [part.state_dict() for part in self.parts]
        if not self.is_main:
            return None
        state: dict[str, Any] = {"config": self.config}
        for s in states:
            state.update(s)
        return state

    def write(self, path: str | Path, **values: Any) -> Path:
        """The parts (and plain ``values``) as one checkpoint file outside the run folder's
        sequence: no ``latest`` pointer, no pruning (an untrained encoder for evaluation)."""
        state = self.state_dict()
        if state is not None:
            save_checkpoint(path, {**state, **values})
        return Path(path)

    @staticmethod
    def read(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
        """Any checkpoint of this project, whole or partial (export reads only an encoder)."""
        return load_checkpoint(path, allow_pickle=allow_pickle)

    def save(self, step: int) -> Optional[Path]:
        """``checkpoint-{step}.pt`` in the run folder, the ``latest`` pointer, pruning."""
        state = self.state_dict()
        if state is None:
            return None
        try:
            self.last = save_run_checkpoint(self.out_dir, step, state, keep=self.keep)
        except OSError as e:  # disk full, permissions, ...: the previous checkpoint is intact
            raise TrainingError(
                f"could not write checkpoint {self.out_dir / checkpoint_name(step)} at step {step} "
                f"({e}); last good checkpoint: {self.last or 'none yet'}"
            ) from e
        return self.last

    def resume(self, setting: str) -> Optional[Path]:
        """``train.resume`` ('auto', 'none' or a path): the checkpoint loaded, or None."""
        path = resolve_resume(setting, self.out_dir)
        if path is None:
            return None
        state = load_checkpoint(path, allow_pickle=self.allow_pickle)
        missing = [k for part in self.parts for k in part.keys if k not in state]
        if missing:
            raise CheckpointError(
                f"{path}: not a training checkpoint of this project (no {missing}); "
                "an exported or foreign file cannot be resumed"
            )
        self._check_same_model(state.get("config", {}), path)
        for part in self.parts:
            try:
                part.load_state_dict(state)
            except UserError:
                raise
            except (RuntimeError, KeyError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"{path}: weights do not fit the requested model ({first})") from e
        self.last = path
        return path

    def _check_same_model(self, saved_config: dict, path: Path) -> None:
        saved, now = saved_config.get("model", {}), self.config["model"]
        diff = {k: (saved.get(k), now[k]) for k in now if k in saved and saved.get(k) != now[k]}
        if diff:
            raise TrainingError(f"{path}: checkpoint was trained with a different model config {diff} (saved, requested)")
        saved_text = saved_config.get("text", {}).get("enabled")
        if saved_text is not None and saved_text != self.config["text"]["enabled"]:
            raise TrainingError(f"{path}: checkpoint has text.enabled={saved_text}, config asks {self.config['text']['enabled']}")
