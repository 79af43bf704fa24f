"""Reader for Pascal VOC 2012 semantic segmentation (the official VOCdevkit layout).

Layout::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png    palette PNGs: index 0 background,
                                                    1..20 the classes, 255 object borders (ignored)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/classes.json                  optional, for non-VOC trees: all names, background first

Items are (image uint8 (H, W, 3), label int64 (H, W)) like ``ADE20kSegmentation``, so the
segmentation engines read both; label 0 is a class here (no zero-label reduction).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from evals.datasets.ade20k import IGNORE_INDEX
from evals.datasets.imagenet import DatasetLayoutError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
SPLITS = ("train", "val", "trainval")


def find_voc_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DatasetLayoutError(f"{root}: not a VOC 2012 tree; expected VOCdevkit/VOC2012/{{JPEGImages,"
                             "SegmentationClass,ImageSets/Segmentation}} under it")


def read_voc_classes(data_root: Path) -> tuple[str, ...]:
    path = data_root / "classes.json"
    if not path.exists():
        return VOC_CLASSES
    names = json.loads(path.read_text())
    names = names.get("classes") if isinstance(names, dict) else names
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise DatasetLayoutError(f"{path}: must list every class name, background first (or be deleted "
                                 "to use VOC's 21)")
    return tuple(names)


class VOCSegmentation(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "val", max_images: Optional[int] = None):
        if split not in SPLITS:
            raise DatasetLayoutError(f"VOC split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.data_root = find_voc_root(root)
        self.classes = read_voc_classes(self.data_root)
        self.reduce_zero_label = False
        list_file = self.data_root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetLayoutError(f"{list_file}: missing; it lists the image ids of the {split} split")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetLayoutError(f"{list_file}: lists no image ids")
        self.images = [self.data_root / "JPEGImages" / f"{i}.jpg" for i in ids]
        self.label_files = [self.data_root / "SegmentationClass" / f"{i}.png" for i in ids]
        missing = [p for pair in zip(self.images, self.label_files) for p in pair if not p.is_file()]
        if missing:
            raise DatasetLayoutError(f"{list_file}: {len(missing)} listed files are missing, e.g. {missing[0]}")
        if max_images:
            self.images, self.label_files = self.images[:max_images], self.label_files[:max_images]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(Image.open(self.images[index]).convert("RGB"))
        with Image.open(self.label_files[index]) as png:
            if png.mode not in ("P", "L"):
                raise DatasetLayoutError(f"{self.label_files[index]}: a {png.mode} PNG; VOC labels are palette (P) "
                                         "PNGs whose pixel values are class indices")
            label = np.asarray(png).astype(np.int64)
        if label.shape != image.shape[:2]:
            raise DatasetLayoutError(f"{self.label_files[index]}: label size {label.shape} differs from image size "
                                     f"{image.shape[:2]}")
        bad = (label >= self.num_classes) & (label != IGNORE_INDEX)
        if bad.any():
            raise DatasetLayoutError(f"{self.label_files[index]}: label {int(label[bad][0])} is neither one of the "
                                     f"{self.num_classes} classes nor {IGNORE_INDEX} (ignore)")
        return image, label
