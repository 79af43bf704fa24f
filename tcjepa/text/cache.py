"""Memory-mapped word-feature cache: frozen text-encoder outputs computed once, read by id.

Layout of a cache folder:
  features.f16   raw float16 array (count, S, d_t), C order, no header (np.memmap)
  lengths.i16    raw int16 (or lengths.i32 when S > 32767) array (count,): real tokens per
                 caption; the padding mask is arange(S) < length
  meta.json      format, encoder identity, S, d_t, count, caption fingerprint, progress

Caption id = position in the caption list given to ``build_text_cache`` (the data layer
passes ``dataset.caption_texts()``, which is in id order).

Synthetic captions are templated and repeat a lot, so a build encodes each distinct caption
(after sanitising) once and writes its features to every id that holds it. The distinct
captions are encoded in a fixed order, sorted by (token count, text), in batches of equal
token count: no padding, hence no compute spent on padding, and every caption is encoded at
exactly its own length, so its features do not depend on which captions share its batch.
(Transformer kernels on CPU are not bitwise invariant to the padded length: the same caption
padded to 12 or to 16 tokens gives features that differ in the last bits.)

The build (``cache_build.py``) writes chunk after chunk (``batch_size`` distinct captions each): data first,
flushed to disk, then meta.json is replaced atomically with the new progress
(``unique_completed`` distinct captions, ``completed`` caption ids). A killed build therefore
never claims more than it wrote, and ``resume=True`` continues at the first unwritten chunk;
the finished files are byte-identical to an uninterrupted build. ``completed == count``
marks a finished cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "tcjepa-text-cache"
VERSION = 1
# How a build orders and batches its work; a partial build made another way is restarted.
BUILD_ORDER = "unique-by-length-v1"
META_FILE = "meta.json"
FEATURES_FILE = "features.f16"


class TextCacheError(UserError, ValueError):
    """A text cache that does not fit (other caption list, encoder or max_words; damaged files).

    Command-line tools print it as one line and exit 2."""


class IncompleteTextCacheError(TextCacheError, RuntimeError):
    """A cache whose build was interrupted (resumable)."""


def caption_fingerprint(captions: Sequence[str]) -> str:
    """sha256 of the caption list, order included; length-prefixed so no two lists collide."""
    h = hashlib.sha256()
    h.update(len(captions).to_bytes(8, "little"))
    for text in captions:
        b = text.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _lengths_file(max_words: int) -> tuple[str, np.dtype]:
    return ("lengths.i16", np.dtype(np.int16)) if max_words <= np.iinfo(np.int16).max else ("lengths.i32", np.dtype(np.int32))


def _read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{folder}: not a text-feature cache (no {META_FILE}); build it with "
            "`tcjepa-data text-cache --data <dataset folder>`"
        ) from None
    except json.JSONDecodeError as e:
        raise TextCacheError(f"{path}: corrupt JSON ({e}); delete the folder and rebuild the cache") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TextCacheError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
            f"{FORMAT!r} version {VERSION}; rebuild the cache with this version of tcjepa"
        )
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / (META_FILE + ".tmp")
    with tmp.open("w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / META_FILE)


class TextFeatureCache:
    """Read side of a finished cache. Picklable: memmaps open lazily in each process.

    ``lookup(ids)`` takes caption ids of any shape (...) and returns float16 features
    (..., S, d_t) and a bool mask (..., S), True at real tokens.
    """

    def __init__(self, out_dir: str | Path):
        self.folder = Path(out_dir)
        meta = _read_meta(self.folder)
        if int(meta["completed"]) < int(meta["count"]):
            raise IncompleteTextCacheError(
                f"{self.folder}: text cache is incomplete ({meta['completed']} of {meta['count']} "
                "captions encoded; the build was interrupted). Finish it by rerunning the same "
                "`tcjepa-data text-cache` command (it resumes), or set data.text_cache='' to "
                "encode captions online"
            )
        self.meta = meta
        self.dim = int(meta["dim"])
        self.max_words = int(meta["max_words"])
        self.fingerprint = meta["caption_fingerprint"]
        self.encoder_fingerprint = meta["encoder_fingerprint"]
        self._count = int(meta["count"])
        self._lengths_dtype = np.dtype(meta["lengths_dtype"])
        for name, dtype, shape in (
            (meta["features_file"], np.float16, (self._count, self.max_words, self.dim)),
            (meta["lengths_file"], self._lengths_dtype, (self._count,)),
        ):
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            path = self.folder / name
            if not path.is_file() or path.stat().st_size != expected:
                size = path.stat().st_size if path.is_file() else "missing"
                raise TextCacheError(
                    f"{path}: expected {expected} bytes for shape {shape}, found {size}; "
                    "the cache is damaged, rebuild it with --no-resume"
                )
        self._features: np.memmap | None = None
        self._lengths: np.memmap | None = None

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"TextFeatureCache({str(self.folder)!r}, count={self._count}, max_words={self.max_words}, "
            f"dim={self.dim}, encoder={self.meta['encoder']!r})"
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_features"] = state["_lengths"] = None  # each worker maps the files itself
        return state

    def _open(self) -> None:
        self._features = np.memmap(
            self.folder / self.meta["features_file"], dtype=np.float16, mode="r",
            shape=(self._count, self.max_words, self.dim),
        )
        self._lengths = np.memmap(
            self.folder / self.meta["lengths_file"], dtype=self._lengths_dtype, mode="r", shape=(self._count,)
        )

    def lookup(self, ids: torch.Tensor | np.ndarray | Sequence[int], trim: bool = False,
               round_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and mask for caption ids; ``trim=True`` cuts S to the longest caption looked
        up, rounded up to a multiple of ``round_to`` (fewer distinct shapes for compiled steps)."""
        if self._features is None:
            self._open()
        ids_np = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if ids_np.dtype.kind not in "iu":
            raise TypeError(f"caption ids must be integers, got dtype {ids_np.dtype}")
        shape = ids_np.shape
        flat = ids_np.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self._count):
            bad = flat[(flat < 0) | (flat >= self._count)][0]
            raise IndexError(f"{self.folder}: caption id {bad} out of range [0, {self._count})")
        lengths = torch.from_numpy(self._lengths[flat].astype(np.int64))
        S = self.max_words
        if trim and flat.size:
            S = min(S, -(-max(int(lengths.max()), 1) // round_to) * round_to)
        # Fancy indexing copies the rows out of the memmap: the result owns its memory.
        feats = torch.from_numpy(np.ascontiguousarray(self._features[flat, :S]))
        mask = torch.arange(S) < lengths[:, None]
        return feats.reshape(*shape, S, self.dim), mask.reshape(*shape, S)

    def check_captions(self, captions: Sequence[str]) -> None:
        """Raise if ``captions`` is not the list the cache was built from."""
        fp = caption_fingerprint(list(captions))
        if fp != self.fingerprint:
            raise TextCacheError(
                f"{self.folder}: text cache was built from a different caption list "
                f"({self._count} captions, fingerprint {self.fingerprint[:12]}...) than the dataset's "
                f"({len(captions)} captions, fingerprint {fp[:12]}...); rebuild it with "
                "`tcjepa-data text-cache --no-resume`"
            )

    def check_encoder(self, encoder_name: str, max_words: int, dim: int) -> None:
        """Raise if the cache does not hold features of this text config (name, S, d_t)."""
        from .encoder import encoder_fingerprint, resolve_text_encoder

        problems = []
        if max_words != self.max_words:
            problems.append(f"max_words {self.max_words} != {max_words}")
        if dim != self.dim:
            problems.append(f"dim {self.dim} != {dim}")
        if encoder_fingerprint(resolve_text_encoder(encoder_name)) != self.encoder_fingerprint:
            problems.append(f"encoder {self.meta['encoder']!r} is not {encoder_name!r}")
        if problems:
            raise TextCacheError(
                f"{self.folder}: text cache does not match the text config ({'; '.join(problems)}); "
                "rebuild it with the config's encoder and max_words, or fix the config"
            )
