"""Frozen features, extracted once and cached on disk.

Per image: the average-pooled patch tokens of the last block (``last1``), the concat of
the average-pooled patch tokens of the last four blocks (``last4``, oldest first),
the backbone's own global vector (``global``), the class tokens of the last four blocks
(``cls4``, backbones with a class token) and, when asked for (attentive probe), the
last block's patch tokens (``tokens``, fp16); ``evals.feature_protocols`` makes the
probes' inputs from them. A cache entry is a folder of ``.npy``
arrays plus ``meta.json`` (no pickle), keyed by a hash of the backbone's protocol info,
the weights file's identity, the dataset's file list and the transform; it is written to
a temporary folder and renamed, so an interrupted run never leaves a half cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from evals.backbones.base import Backbone

ARRAYS = ("last1", "last4", "global", "labels")
OPTIONAL_ARRAYS = ("cls4", "tokens")
NUM_LAST_LAYERS = 4
CACHE_VERSION = 2


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

    def get(self, name: str) -> Optional[np.ndarray]:
        """An array by name ('last1', 'last4', 'global', 'cls4', 'tokens'; None when not
        extracted) or a feature set of ``evals.feature_protocols`` ('cls_patch_mean:last4')."""
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


def load_cached(folder: Path) -> FeatureSet:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS}
    extra = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
             for name in OPTIONAL_ARRAYS if (folder / f"{name}.npy").exists()}
    return FeatureSet(arrays["last1"], arrays["last4"], arrays["global"], arrays["labels"], meta, extra)


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
    keep_tokens: bool = False,
) -> FeatureSet:
    """Features of every item of ``dataset`` ((image tensor, label) pairs), from the cache
    when present. ``dataset`` must have ``fingerprint()`` and carry its transform's repr.
    ``keep_tokens`` also stores the last block's patch tokens (fp16; the attentive probe's input)."""
    from evals.feature_protocols import pooled_arrays

    transform = repr(getattr(dataset, "transform", None))
    extra_key = {"split": getattr(dataset, "split", None)} | ({"tokens": True} if keep_tokens else {})
    key = cache_key(backbone, dataset.fingerprint(), transform, extra_key)
    folder = Path(cache_dir) / f"{desc}-{key}"
    if (folder / "meta.json").exists():
        return load_cached(folder)

    backbone = backbone.to(device).eval()
    use_amp = amp and torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    layers_used = None
    start = 0
    for images, labels in tqdm(loader, desc=f"{desc} ({len(dataset)} images)", unit="batch"):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            grids, global_vector, class_tokens = backbone.forward_features(
                images.to(device, non_blocking=True), NUM_LAST_LAYERS)
        layers_used = len(grids)
        batch = {**pooled_arrays(grids, global_vector, class_tokens), "labels": labels}
        if keep_tokens:
            batch["tokens"] = grids[-1].flatten(1, 2).half()
        if not arrays:  # allocate on disk once the widths are known
            for name, t in batch.items():
                dtype = {"labels": np.int64, "tokens": np.float16}.get(name, np.float32)
                arrays[name] = np.lib.format.open_memmap(
                    tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(len(dataset), *t.shape[1:])
                )
        end = start + len(labels)
        for name, t in batch.items():
            arrays[name][start:end] = t.cpu().numpy()
        start = end
    for a in arrays.values():
        a.flush()
    meta = {
        "key": key,
        "num_images": len(dataset),
        "layers_in_last4": layers_used,
        "pooling": "average of patch tokens after the final norm",
        "transform": transform,
        "batch_size": batch_size,
        "amp_bf16": use_amp,
        "backbone": backbone.protocol_info(),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    del arrays
    if folder.exists():  # another process finished first; theirs is as good as ours
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return load_cached(folder)
