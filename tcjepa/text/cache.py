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

A build writes chunk after chunk (``batch_size`` distinct captions each): data first,
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
from tqdm import tqdm

from ..errors import UserError
from .encoder import FrozenTextEncoder, sanitize_captions

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


def _build_threads(current: int, cpus: int, load: float) -> int:
    """Intra-op threads for a CPU build: the idle cores, at least 1, at most torch's setting.

    On a busy machine extra OpenMP threads mostly spin at barriers waiting for descheduled
    siblings: on a 2-core machine at load 4, 1 thread encoded ~1.5x faster than 2 (and the
    bytes are the same for any thread count).
    """
    return max(1, min(current, int(round(cpus - load))))


def _encode_group(encoder: FrozenTextEncoder, texts: list[str]) -> torch.Tensor:
    """Features (n, L, d) of captions that all have L tokens: no padding anywhere.

    A lone caption is encoded twice in one batch: on CPU a batch of one can take other
    kernels (different last bits) than any larger batch.
    """
    feats, mask = encoder.encode(texts if len(texts) > 1 else texts * 2, warn_truncation=False)
    if not bool(mask.all()):  # cannot happen for equal token counts; never write skewed data
        raise RuntimeError("text cache: captions of one token count were padded; tokenizer mismatch")
    return feats[: len(texts)]


def build_text_cache(
    captions: Sequence[str],
    out_dir: str | Path,
    encoder: FrozenTextEncoder,
    batch_size: int = 256,
    resume: bool = True,
    progress: bool = True,
    dedupe: bool = True,
) -> Path:
    """Encode every distinct caption once and store fp16 word features padded to S = max_words.

    ``resume=True`` continues a partial build of the same captions with the same encoder
    and refuses (ValueError) if either differs; ``resume=False`` starts over. ``dedupe=False``
    encodes every caption id separately (the same bytes, slower; kept to test that claim).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    captions = list(captions)
    if not captions:
        raise ValueError("build_text_cache got no captions")
    # Validate everything before the first chunk, so a bad caption fails in seconds with
    # its caption id, not hours into a build. encode() sanitises the same way, so two ids
    # whose captions sanitise to the same text get the same features.
    clean = sanitize_captions(captions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count, S, dim = len(captions), encoder.max_words, encoder.dim
    lengths_name, lengths_dtype = _lengths_file(S)

    # Work items: distinct texts (or every id), sorted by (token count, text), each with its ids.
    if dedupe:
        ids_of: dict[str, list[int]] = {}
        for i, text in enumerate(clean):
            ids_of.setdefault(text, []).append(i)
        texts = list(ids_of)
        groups = [ids_of[t] for t in texts]
    else:
        texts, groups = clean, [[i] for i in range(count)]
    full_lengths = [len(ids) for ids in encoder.tokenizer(
        texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda u: (min(full_lengths[u], S), texts[u], groups[u][0]))
    texts = [texts[u] for u in order]
    groups = [groups[u] for u in order]
    token_counts = [min(full_lengths[u], S) for u in order]
    num_truncated = sum(len(groups[j]) for j, u in enumerate(order) if full_lengths[u] > S)
    unique = len(texts)

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": encoder.name,
        "encoder_path": encoder.path,
        "encoder_fingerprint": encoder.fingerprint,
        "dim": dim,
        "max_words": S,
        "count": count,
        "caption_fingerprint": caption_fingerprint(captions),
        "features_file": FEATURES_FILE,
        "features_dtype": "float16",
        "lengths_file": lengths_name,
        "lengths_dtype": lengths_dtype.name,
        "batch_size": batch_size,
        "build_order": BUILD_ORDER,
        "unique_count": unique,
        "unique_completed": 0,
        "completed": 0,
        "num_truncated": num_truncated,
    }

    start = done_ids = 0
    if resume and (out / META_FILE).exists():
        old = _read_meta(out)
        _check_same_build(out, old, meta)
        if int(old["completed"]) >= count:
            logger.info("%s: text cache already complete (%d captions)", out, count)
            return out
        if old.get("build_order") == BUILD_ORDER and old.get("unique_count") == unique:
            start, done_ids = int(old["unique_completed"]), int(old["completed"])
            if start:
                logger.info("%s: resuming text cache at distinct caption %d of %d", out, start, unique)
        else:
            logger.warning("%s: partial text cache from another tcjepa version; starting over", out)
    mode = "r+" if start else "w+"  # w+ creates (or truncates) the file at full size
    if not start:
        (out / META_FILE).unlink(missing_ok=True)  # never trust a half-written previous build
    features = np.memmap(out / FEATURES_FILE, dtype=np.float16, mode=mode, shape=(count, S, dim))
    lengths = np.memmap(out / lengths_name, dtype=lengths_dtype, mode=mode, shape=(count,))
    meta["unique_completed"], meta["completed"] = start, done_ids
    _write_meta(out, meta)

    desc = f"text cache ({encoder.name}, {unique} distinct of {count} captions)"
    bar = tqdm(total=unique, initial=start, desc=desc, unit="cap", disable=not progress)
    threads = torch.get_num_threads()
    if encoder.device.type == "cpu" and hasattr(os, "getloadavg"):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(_build_threads(threads, cpus, os.getloadavg()[0]))
    try:
        with torch.inference_mode():
            for lo in range(start, unique, batch_size):
                hi = min(lo + batch_size, unique)
                chunk = np.zeros((hi - lo, S, dim), dtype=np.float16)
                a = lo
                while a < hi:  # one encoder call per run of equal token counts
                    b = a + 1
                    while b < hi and token_counts[b] == token_counts[a]:
                        b += 1
                    feats = _encode_group(encoder, texts[a:b])
                    chunk[a - lo : b - lo, : feats.shape[1]] = feats.cpu().numpy().astype(np.float16)
                    a = b
                if not np.isfinite(chunk).all():
                    bad_j = int(np.nonzero(~np.isfinite(chunk).reshape(hi - lo, -1).all(1))[0][0])
                    raise FloatingPointError(
                        f"caption {groups[lo + bad_j][0]}: text features overflow float16 (|x| > 65504); this "
                        "encoder cannot be cached in fp16, encode online instead (data.text_cache='')"
                    )
                ids = np.concatenate([np.asarray(groups[j], dtype=np.int64) for j in range(lo, hi)])
                src = np.repeat(np.arange(hi - lo), [len(groups[j]) for j in range(lo, hi)])
                by_id = np.argsort(ids, kind="stable")  # write in file order
                ids, src = ids[by_id], src[by_id]
                features[ids] = chunk[src]
                lengths[ids] = np.asarray(token_counts[lo:hi], dtype=lengths_dtype)[src]
                features.flush()
                lengths.flush()
                meta["unique_completed"] = hi
                meta["completed"] = done_ids = done_ids + len(ids)
                _write_meta(out, meta)
                bar.update(hi - lo)
    finally:
        torch.set_num_threads(threads)
        bar.close()
        del features, lengths  # unmap before anyone reopens the files
    if meta["num_truncated"]:
        logger.warning(
            "%s: %d of %d captions were longer than max_words=%d tokens and were truncated",
            out, meta["num_truncated"], count, S,
        )
    return out


def _check_same_build(folder: Path, old: dict, new: dict) -> None:
    for key, what in (
        ("caption_fingerprint", "a different caption list"),
        ("encoder_fingerprint", f"a different text encoder ({old.get('encoder')!r} at {old.get('encoder_path')})"),
        ("max_words", "a different max_words"),
        ("dim", "a different feature width"),
        ("count", "a different number of captions"),
    ):
        if old.get(key) != new[key]:
            raise TextCacheError(
                f"{folder}: the partial cache there was built from {what} "
                f"({key}: {old.get(key)!r} != {new[key]!r}); pass --no-resume (resume=False) "
                "to overwrite it, or choose another --out folder"
            )


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
