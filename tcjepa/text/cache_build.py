"""Building a word-feature cache: encode every distinct caption once, chunk by chunk, resumably.

The layout of the folder it writes, and the reader, are in ``cache.py``. Work items are the
distinct (sanitised) captions sorted by (token count, text); each chunk is written, flushed,
then recorded in ``meta.json``, so a killed build resumes at its first unwritten chunk and
ends byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .cache import (
    BUILD_ORDER,
    FEATURES_FILE,
    FORMAT,
    META_FILE,
    VERSION,
    TextCacheError,
    _lengths_file,
    _read_meta,
    _write_meta,
    caption_fingerprint,
)
from ..device import idle_core_threads
from .encoder import FrozenTextEncoder, sanitize_captions

logger = logging.getLogger("tcjepa.text.cache")


def _encode_group(encoder: FrozenTextEncoder, texts: list[str]) -> torch.Tensor:
    """Features (n, L, d) of captions that all have L tokens: no padding anywhere.

    A lone caption is encoded twice in one batch: on CPU a batch of one can take other
    kernels (different last bits) than any larger batch.
    """
    feats, mask = encoder.encode(texts if len(texts) > 1 else texts * 2, warn_truncation=False)
    if not bool(mask.all()):  # cannot happen for equal token counts; never write skewed data
        raise RuntimeError("text cache: captions of one token count were padded; tokenizer mismatch")
    return feats[: len(texts)]


def _work_items(clean: list[str], encoder: FrozenTextEncoder, dedupe: bool
                ) -> tuple[list[str], list[list[int]], list[int], int]:
    """Distinct texts (or every id), sorted by (token count, text), each with its caption ids
    and token count (at most S), and how many caption ids are longer than S tokens."""
    S = encoder.max_words
    if dedupe:
        ids_of: dict[str, list[int]] = {}
        for i, text in enumerate(clean):
            ids_of.setdefault(text, []).append(i)
        texts = list(ids_of)
        groups = [ids_of[t] for t in texts]
    else:
        texts, groups = clean, [[i] for i in range(len(clean))]
    full_lengths = [len(ids) for ids in encoder.tokenizer(
        texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda u: (min(full_lengths[u], S), texts[u], groups[u][0]))
    num_truncated = sum(len(groups[u]) for u in order if full_lengths[u] > S)
    return ([texts[u] for u in order], [groups[u] for u in order], [min(full_lengths[u], S) for u in order],
            num_truncated)


def _encode_chunk(encoder: FrozenTextEncoder, texts: list[str], token_counts: list[int],
                  groups: list[list[int]], lo: int, hi: int) -> np.ndarray:
    """fp16 features (hi - lo, S, d) of work items lo..hi, one encoder call per run of equal
    token counts; features that overflow fp16 are an error naming the caption."""
    chunk = np.zeros((hi - lo, encoder.max_words, encoder.dim), dtype=np.float16)
    a = lo
    while a < hi:
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
    return chunk


def _new_meta(encoder: FrozenTextEncoder, captions: list[str], batch_size: int, unique: int,
              num_truncated: int) -> dict:
    """``meta.json`` of a build that has not written anything yet."""
    lengths_name, lengths_dtype = _lengths_file(encoder.max_words)
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoder": encoder.name,
        "encoder_path": encoder.path,
        "encoder_fingerprint": encoder.fingerprint,
        "dim": encoder.dim,
        "max_words": encoder.max_words,
        "count": len(captions),
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


def _resume_point(out: Path, meta: dict) -> Optional[tuple[int, int]]:
    """(distinct captions done, caption ids done) of the partial build in ``out``, (0, 0) to
    start over, None when it is complete; a build of other captions or encoder is an error."""
    old = _read_meta(out)
    _check_same_build(out, old, meta)
    count, unique = meta["count"], meta["unique_count"]
    if int(old["completed"]) >= count:
        logger.info("%s: text cache already complete (%d captions)", out, count)
        return None
    if old.get("build_order") == BUILD_ORDER and old.get("unique_count") == unique:
        start = int(old["unique_completed"])
        if start:
            logger.info("%s: resuming text cache at distinct caption %d of %d", out, start, unique)
        return start, int(old["completed"])
    logger.warning("%s: partial text cache from another tcjepa version; starting over", out)
    return 0, 0


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

    texts, groups, token_counts, num_truncated = _work_items(clean, encoder, dedupe)
    unique = len(texts)

    meta = _new_meta(encoder, captions, batch_size, unique, num_truncated)
    resumed = _resume_point(out, meta) if resume and (out / META_FILE).exists() else (0, 0)
    if resumed is None:
        return out
    start, done_ids = resumed
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
        torch.set_num_threads(idle_core_threads(threads, cpus, os.getloadavg()[0]))
    try:
        with torch.inference_mode():
            for lo in range(start, unique, batch_size):
                hi = min(lo + batch_size, unique)
                chunk = _encode_chunk(encoder, texts, token_counts, groups, lo, hi)
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
