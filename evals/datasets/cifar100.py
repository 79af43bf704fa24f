"""Reader for CIFAR-100's python version (the official ``cifar-100-python`` folder).

Layout::

    cifar-100-python/train   pickled dict: b'data' uint8 (50000, 3072) (1024 R, 1024 G, 1024 B
    cifar-100-python/test    values per image, each plane row-major), b'fine_labels', ...
    cifar-100-python/meta    b'fine_label_names', b'coarse_label_names'

The batches are read by :mod:`evals.datasets.safe_pickle` (numpy arrays and plain data only,
never code). ``tcjepa.data.transfer_layouts.write_cifar100`` writes this layout from scenes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from evals.datasets.imagenet import DatasetLayoutError
from evals.datasets.safe_pickle import RefusedPickle, load_data_pickle

FOLDER = "cifar-100-python"
SPLIT_FILES = {"train": "train", "val": "test", "test": "test"}


def find_cifar_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for candidate in (root, root / FOLDER):
        if (candidate / "meta").is_file() and (candidate / "train").is_file():
            return candidate
    raise DatasetLayoutError(f"{root}: not a CIFAR-100 folder; expected {FOLDER}/{{train,test,meta}} "
                             "(the python version of the official release) in it or as it")


def _load(path: Path) -> dict:
    try:
        obj = load_data_pickle(path)
    except RefusedPickle as e:
        raise DatasetLayoutError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise DatasetLayoutError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetLayoutError(f"{path}: holds a {type(obj).__name__}, expected CIFAR's dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values, path: Path, key: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise DatasetLayoutError(f"{path}: {key!r} must be a non-empty list of names")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CIFAR100(torch.utils.data.Dataset):
    """(image, fine label) pairs of one split; ``transform`` maps a PIL image to a tensor."""

    def __init__(self, root: str | Path, split: str, transform: Optional[Callable] = None):
        if split not in SPLIT_FILES:
            raise DatasetLayoutError(f"CIFAR-100 split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        self.root, self.split, self.transform = find_cifar_root(root), split, transform
        self.path = self.root / SPLIT_FILES[split]
        if not self.path.is_file():
            raise DatasetLayoutError(f"{self.path}: missing; a CIFAR-100 folder holds train, test and meta")
        meta_path = self.root / "meta"
        self.classes = _names(_load(meta_path).get("fine_label_names"), meta_path, "fine_label_names")
        batch = _load(self.path)
        data, labels = batch.get("data"), batch.get("fine_labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetLayoutError(f"{self.path}: 'data' must be a uint8 (N, 3072) array, got "
                                     f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
        if not isinstance(labels, list) or len(labels) != len(data):
            raise DatasetLayoutError(f"{self.path}: 'fine_labels' must list one label per row of 'data'")
        self.labels_array = np.asarray(labels, dtype=np.int64)
        bad = (self.labels_array < 0) | (self.labels_array >= len(self.classes))
        if bad.any():
            raise DatasetLayoutError(f"{self.path}: fine label {int(self.labels_array[bad][0])} outside the "
                                     f"{len(self.classes)} names in {meta_path}")
        self.images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(np.ascontiguousarray(self.images[i]))
        return (self.transform(image) if self.transform else image), int(self.labels_array[i])

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.labels_array)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in (self.root / "meta", self.path):
            h.update(path.read_bytes())
        return h.hexdigest()[:16]
