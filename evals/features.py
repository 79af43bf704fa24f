"""Frozen features, extracted once into an on-disk cache, sharded over ranks, resumable.

Per image: the average-pooled patch tokens of the last block (``last1``), the concat of
the average-pooled patch tokens of the last four blocks (``last4``, oldest first), the
backbone's own global vector (``global``), the class tokens of the last four blocks
(``cls4``, backbones with one) and, when asked for (attentive probe), the last block's
patch tokens (``tokens``); ``evals.feature_protocols`` builds the probes' vectors from
them. Stored as float16 (labels as int64) in the
chunked cache of ``feature_cache.py``, keyed by a hash of the backbone's protocol info, the
weights file's identity, the dataset's file list and the transform.

Under ``torchrun`` every rank extracts its share of the missing chunks (an explicit split
of chunk indices: no padding, no duplicates); batches never straddle chunks, so the bytes
of every row are the same whatever the number of ranks or restarts. Probes read the cache
through :class:`FeatureRows`, a block at a time, never the whole file.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from evals.backbones.base import Backbone, UserError
from evals.distributed import World, current_world, shard
from evals.feature_cache import ArraySpec, FeatureCache, open_complete

ARRAYS = ("last1", "last4", "global", "labels")
OPTIONAL_ARRAYS = ("cls4", "tokens")
NUM_LAST_LAYERS = 4
CACHE_VERSION = 3
FEATURE_DTYPE = "float16"
CHUNK_IMAGES = 1024  # rows per resumable unit (rounded up to whole batches)
BLOCK_BYTES = 256 * 2**20  # what a probe holds in memory at a time, per split


@dataclass
class FeatureSet:
    last1: np.ndarray
    last4: np.ndarray
    global_: np.ndarray
    labels: np.ndarray
    meta: dict
    extra: dict = field(default_factory=dict)  # cls4, tokens: present when extracted

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, name: str):
        """An array by name ('last1', 'last4', 'global', 'cls4', 'tokens'; None when not
        extracted) or a feature set of ``evals.feature_protocols`` ('cls_patch_mean:last4',
        a lazy row view)."""
        arrays = {"last1": self.last1, "last4": self.last4, "global": self.global_}
        if name in arrays:
            return arrays[name]
        if name in OPTIONAL_ARRAYS:
            return self.extra.get(name)
        from evals.feature_protocols import feature_array

        return feature_array(self, name)


def weights_identity(weights: Optional[str]) -> list:
    """Path, size and mtime of every weights file: cheap, and changes when the file does."""
    if not weights or not Path(weights).exists():
        return [weights]
    path = Path(weights)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(backbone: Backbone, data_fingerprint: str, transform: str, extra: Optional[dict] = None) -> str:
    info = backbone.protocol_info()
    payload = {
        "version": CACHE_VERSION,
        "backbone": info,
        "weights": weights_identity(info.get("weights")),
        "data": data_fingerprint,
        "transform": transform,
        "layers": NUM_LAST_LAYERS,
        **(extra or {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]



def load_cached(folder: Path, key: Optional[str] = None, num_items: Optional[int] = None,
                verify: bool = False) -> FeatureSet:
    """A complete cache as memory-mapped arrays (read-only; nothing is loaded until used)."""
    cache, meta = open_complete(Path(folder), key, num_items, verify)
    arrays = cache.open_arrays()
    extra = {name: arrays[name] for name in OPTIONAL_ARRAYS if name in arrays}
    return FeatureSet(arrays["last1"], arrays["last4"], arrays["global"], arrays["labels"], meta, extra)


def pooled_features(backbone: Backbone, images: torch.Tensor, use_amp: bool,
                    keep_tokens: bool = False) -> dict[str, torch.Tensor]:
    """The cached arrays of one batch (float32 on the batch's device)."""
    from evals.feature_protocols import pooled_arrays

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
        grids, global_vector, class_tokens = backbone.forward_features(images, NUM_LAST_LAYERS)
    arrays = pooled_arrays(grids, global_vector, class_tokens)
    if keep_tokens:
        arrays["tokens"] = grids[-1].float().flatten(1, 2)
    return arrays


def _array_specs(backbone: Backbone, dataset, device: str, use_amp: bool,
                 keep_tokens: bool) -> tuple[dict[str, ArraySpec], int]:
    """Widths of every array, from one forward pass on the first image."""
    image, _ = dataset[0]
    batch = pooled_features(backbone, image[None].to(device), use_amp, keep_tokens)
    specs = {name: ArraySpec(FEATURE_DTYPE, tuple(t.shape[1:])) for name, t in batch.items()}
    specs["labels"] = ArraySpec("int64", ())
    return specs, specs["last4"].row_shape[0] // specs["last1"].row_shape[0]  # blocks in last4


def _chunk_batches(cache: FeatureCache, chunks: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches that never cross a chunk: the same batches whoever extracts the chunk."""
    batches = []
    for chunk in chunks:
        rows = cache.chunk_rows(chunk)
        batches += [list(rows[s:s + batch_size]) for s in range(0, len(rows), batch_size)]
    return batches


def _to_storage(name: str, tensor: torch.Tensor, dataset) -> np.ndarray:
    array = tensor.cpu().numpy()
    if name == "labels":
        return array.astype(np.int64)
    stored = array.astype(FEATURE_DTYPE)
    if not np.isfinite(stored).all():
        raise UserError(f"{getattr(dataset, 'root', 'dataset')}: {name} features are not finite in float16 "
                        f"(max |x| = {np.abs(array).max():.3g}; float16 holds up to 65504)")
    return stored


def _extract_chunks(backbone: Backbone, dataset, cache: FeatureCache, chunks: Sequence[int], batch_size: int,
                    num_workers: int, device: str, use_amp: bool, world: World, desc: str) -> None:
    keep_tokens = "tokens" in cache.arrays
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_chunk_batches(cache, chunks, batch_size), num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    pending = list(chunks)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in cache.arrays}
    filled = 0
    bar = tqdm(total=sum(len(cache.chunk_rows(c)) for c in chunks), unit="img", disable=not world.is_main,
               desc=f"{desc} (rank 0 of {world.size}; {len(chunks)} chunks)")
    for images, labels in loader:
        batch = pooled_features(backbone, images.to(device, non_blocking=True), use_amp, keep_tokens)
        batch["labels"] = labels
        for name, tensor in batch.items():
            parts[name].append(_to_storage(name, tensor, dataset))
        filled += len(labels)
        bar.update(len(labels))
        if filled == len(cache.chunk_rows(pending[0])):
            cache.write_chunk(pending.pop(0), {name: np.concatenate(p) for name, p in parts.items()}, world.rank)
            parts, filled = {name: [] for name in cache.arrays}, 0
    bar.close()


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    dataset,
    cache_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    amp: bool = True,
    desc: str = "features",
    chunk_size: Optional[int] = None,
    verify: bool = False,
    keep_tokens: bool = False,
) -> FeatureSet:
    """Features of every item of ``dataset`` ((image tensor, label) pairs), from the cache
    when it is complete; otherwise the missing chunks are extracted, shared among the ranks
    of the process group (call it on every rank). ``dataset`` must have ``fingerprint()``
    and carry its transform's repr. ``keep_tokens`` also stores the last block's patch
    tokens (the attentive probe's input; a cache of its own)."""
    if batch_size < 1:
        raise UserError(f"feature-extraction batch size must be >= 1, got {batch_size}")
    transform = repr(getattr(dataset, "transform", None))
    extra_key = {"split": getattr(dataset, "split", None)} | ({"tokens": True} if keep_tokens else {})
    key = cache_key(backbone, dataset.fingerprint(), transform, extra_key)
    folder = Path(cache_dir) / f"{desc}-{key}"
    if (folder / "meta.json").exists():
        return load_cached(folder, key, len(dataset), verify)

    world = current_world()
    backbone = backbone.to(device).eval()
    use_amp = amp and torch.device(device).type == "cuda"
    specs, layers_used = _array_specs(backbone, dataset, device, use_amp, keep_tokens)
    chunk_size = chunk_size or batch_size * math.ceil(CHUNK_IMAGES / batch_size)
    cache = FeatureCache(folder, key, len(dataset), chunk_size, specs)
    if world.is_main:
        state = cache.create_or_resume()
        if state == "resumed":
            print(f"{desc}: resuming {folder} ({cache.num_chunks - len(cache.missing_chunks())}/"
                  f"{cache.num_chunks} chunks already there)")
    world.barrier()
    missing = cache.missing_chunks()  # every rank lists before any rank writes: one shared view
    world.barrier()
    _extract_chunks(backbone, dataset, cache, shard(missing, world), batch_size, num_workers, device,
                    use_amp, world, desc)
    world.barrier()
    if world.is_main:
        cache.finish({
            "layers_in_last4": layers_used,
            "pooling": "average of patch tokens after the final norm",
            "transform": transform,
            "batch_size": batch_size,
            "amp_bf16": use_amp,
            "storage": f"{FEATURE_DTYPE} features, int64 labels",
            "extracted_by": f"{world.size} process(es)",
            "backbone": backbone.protocol_info(),
        })
    world.barrier()
    return load_cached(folder, key, len(dataset), verify)


# ----------------------------------------------------------------------------- reading for probes


class FeatureRows:
    """Some rows of some arrays of a :class:`FeatureSet`, read in blocks of at most
    ``BLOCK_BYTES`` (as float32), optionally standardised: what a probe trains from."""

    def __init__(self, features: FeatureSet, names: Sequence[str], rows: Optional[np.ndarray] = None,
                 block_bytes: int = BLOCK_BYTES):
        self.features, self.names = features, tuple(names)
        self.rows = np.arange(len(features)) if rows is None else np.sort(np.asarray(rows))
        self.dims = {n: int(np.prod(features.get(n).shape[1:])) for n in self.names}
        self.block_rows = max(1, block_bytes // (4 * max(sum(self.dims.values()), 1)))
        self.transform: Optional[dict] = None  # name -> (mean, std), set by standardize_with

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rows: np.ndarray, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = {}
        for name in self.names:
            t = torch.from_numpy(np.asarray(self.features.get(name)[rows], dtype=np.float32)).to(device)
            if self.transform is not None:
                mean, std = self.transform[name]
                t = (t - mean.to(device)) / std.to(device)
            x[name] = t
        return x, torch.from_numpy(np.asarray(self.features.labels[rows], dtype=np.int64)).to(device)

    def moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-dimension mean and std (unbiased) of these rows, in one streaming pass (float64)."""
        sums = {n: np.zeros(d) for n, d in self.dims.items()}
        squares = {n: np.zeros(d) for n, d in self.dims.items()}
        for start in range(0, len(self.rows), self.block_rows):
            block = self.rows[start:start + self.block_rows]
            for n in self.names:
                x = np.asarray(self.features.get(n)[block], dtype=np.float64).reshape(len(block), -1)
                sums[n] += x.sum(0)
                squares[n] += (x * x).sum(0)
        count = max(len(self.rows), 1)
        out = {}
        for n in self.names:
            s, s2 = sums[n], squares[n]
            mean = s / count
            var = np.maximum(s2 - count * mean * mean, 0) / max(count - 1, 1)
            out[n] = (torch.from_numpy(mean).float()[None], torch.from_numpy(np.sqrt(var)).float().clamp_min(1e-6)[None])
        return out

    def standardize_with(self, moments: dict) -> "FeatureRows":
        self.transform = moments
        return self

    def batches(self, batch_size: int, device="cpu", generator: Optional[torch.Generator] = None
                ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Minibatches in row order, or shuffled when ``generator`` is given: blocks of
        contiguous rows in random order, rows shuffled within each block (a whole permutation
        when everything fits in one block)."""
        starts = list(range(0, len(self.rows), self.block_rows))
        if generator is not None:
            starts = [starts[i] for i in torch.randperm(len(starts), generator=generator).tolist()]
        for start in starts:
            block = self.rows[start:start + self.block_rows]
            x, y = self._read(block, device)
            order = (torch.randperm(len(block), generator=generator).to(device) if generator is not None
                     else torch.arange(len(block), device=device))
            for s in range(0, len(block), batch_size):
                idx = order[s:s + batch_size]
                yield {n: v[idx] for n, v in x.items()}, y[idx]
