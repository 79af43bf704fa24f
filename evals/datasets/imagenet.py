"""Reader for ImageNet-layout classification trees (ILSVRC-2012 or generated ones).

Layout::

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG      the validation set sorted into class folders

Class indices come from the sorted train folders and are reused for val, so label k
means the same class in both splits. ``tcjepa-data scenes --out DIR`` writes this layout
under ``DIR/imagenet``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image
from torchvision import transforms as T

from evals.backbones.base import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")


class DatasetLayoutError(UserError):
    """A dataset folder that is not in the expected layout; the message says how to fix it."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_root(root: Path) -> None:
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if not missing:
        return
    hint = ""
    if (root / "imagenet" / "train").is_dir():
        hint = f" (did you mean {root / 'imagenet'}? tcjepa-data writes the tree there)"
    raise DatasetLayoutError(
        f"{root}: expected {', '.join(f'{s}/<class>/*.JPEG' for s in SPLITS)}; missing {missing}{hint}"
    )


def class_names(root: Path) -> list[str]:
    check_root(root)
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise DatasetLayoutError(f"{root / 'train'}: no class folders (expected train/<wnid>/*.JPEG)")
    return classes


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` in RGB; a file PIL cannot read is a DatasetLayoutError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated / non-image files
        raise DatasetLayoutError(f"{path}: not a readable image ({type(e).__name__}: {e}); "
                                 f"replace or remove the file") from None


class ImageFiles(torch.utils.data.Dataset):
    """Labelled image files: subclasses fill ``samples`` ((path, label) pairs) and ``transform``."""

    samples: list[tuple[Path, int]]
    transform: Optional[Callable]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = open_rgb(path)
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


class ImageNetFolder(ImageFiles):
    """(image tensor, label) pairs of one split; ``transform`` maps a PIL image to a tensor."""

    def __init__(self, root: str | Path, split: str, transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.classes = class_names(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        split_dir = self.root / split
        folders = sorted(d for d in split_dir.iterdir() if d.is_dir())
        loose = _images_in(split_dir)
        if loose and not folders:
            raise DatasetLayoutError(
                f"{split_dir}: images lie directly in the split folder; sort them into {split}/<wnid>/ "
                f"(for ILSVRC-2012 val, use the ground-truth labels to move each image into its class folder)"
            )
        unknown = sorted(d.name for d in folders if d.name not in self.class_to_idx)
        if unknown:
            raise DatasetLayoutError(
                f"{split_dir}: class folders not present in train/: {unknown[:10]}"
                + (f" ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
            )
        self.samples: list[tuple[Path, int]] = [
            (p, self.class_to_idx[d.name]) for d in folders for p in _images_in(d)
        ]
        if not self.samples:
            raise DatasetLayoutError(f"{split_dir}: no images ({'/'.join(IMAGE_SUFFIXES)}) in its class folders")
        self.transform = transform

    def fingerprint(self) -> str:
        """Identifies the exact file list, classes and sizes: part of the feature-cache key."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        for path, label in self.samples:
            h.update(f"{path.relative_to(self.root)}|{label}|{path.stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def eval_transform(image_size: int, mean, std, crop_fraction: float = 0.875) -> T.Compose:
    """Resize the short side to image_size / crop_fraction, center-crop image_size (the
    standard linear-probe evaluation transform; 256 -> 224 at the default fraction)."""
    resize = int(round(image_size / crop_fraction))
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
