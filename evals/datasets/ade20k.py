"""Reader for ADE20k-layout segmentation trees (the real ADEChallengeData2016 or generated ones).

Layout (the one of the official release, which MMSegmentation's ADE20KDataset also reads)::

    ADEChallengeData2016/
      images/{training,validation}/*.jpg        RGB images
      annotations/{training,validation}/*.png   uint8 labels, 0 = "other", k = class k
      classes.json                               optional: class names, for non-ADE trees

``classes.json`` is either a list of names or ``{"classes": [...]}``; it lists the classes
*after* label reduction (label k in the PNG is class ``classes[k - 1]``). Without it the
150 ADE20k names are used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from evals.backbones.base import UserError

IGNORE_INDEX = 255
SPLIT_ALIASES = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
CLASSES_FILE = "classes.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# MMSegmentation's spelling (including 'bed '), so names round-trip through its ADE20KDataset.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
    'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing',
    'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink',
    'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
    'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain',
    'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket',
    'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
    'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
    'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag',
)
assert len(ADE20K_CLASSES) == 150


def find_ade20k_root(root: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder, given it or its parent."""
    root = Path(root).expanduser()
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise UserError(
        f"evals/datasets/ade20k.py: {root} is not an ADE20k tree. Expected "
        f"{root}/ADEChallengeData2016/images/{{training,validation}}/*.jpg and "
        f"{root}/ADEChallengeData2016/annotations/{{training,validation}}/*.png "
        "(or the same folders directly under the given path). Pass --data the folder that "
        "contains ADEChallengeData2016, or generate a synthetic tree with tcjepa-data."
    )


def read_class_names(data_root: Path) -> tuple[str, ...]:
    path = data_root / CLASSES_FILE
    if not path.exists():
        return ADE20K_CLASSES
    names = json.loads(path.read_text())
    if isinstance(names, dict):
        names = names.get("classes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(
            f"evals/datasets/ade20k.py: {path} must hold a non-empty list of class names or "
            '{"classes": [...]}; delete it to use the 150 ADE20k names.'
        )
    if len(names) >= IGNORE_INDEX:
        raise UserError(f"{path}: {len(names)} classes do not fit uint8 labels with ignore index 255")
    return tuple(names)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20k convention: 0 ('other') becomes ignored, class k becomes k - 1."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out


class ADE20kSegmentation(torch.utils.data.Dataset):
    """(image uint8 RGB (H, W, 3), label int64 (H, W)) pairs of one split, sorted by file name."""

    def __init__(
        self,
        root: str | Path,
        split: str = "validation",
        reduce_zero_label: bool = True,
        max_images: Optional[int] = None,
    ):
        if split not in SPLIT_ALIASES:
            raise UserError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
        self.split = SPLIT_ALIASES[split]
        self.data_root = find_ade20k_root(root)
        self.reduce_zero_label = reduce_zero_label
        self.classes = read_class_names(self.data_root)
        self.img_dir = self.data_root / "images" / self.split
        self.ann_dir = self.data_root / "annotations" / self.split
        for folder in (self.img_dir, self.ann_dir):
            if not folder.is_dir():
                raise UserError(
                    f"evals/datasets/ade20k.py: missing {folder}; an ADE20k tree needs "
                    "images/{training,validation} and annotations/{training,validation}."
                )
        images = sorted(p for p in self.img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"evals/datasets/ade20k.py: no .jpg/.png images in {self.img_dir}")
        missing = [p.name for p in images if not (self.ann_dir / f"{p.stem}.png").exists()]
        if missing:
            raise UserError(
                f"evals/datasets/ade20k.py: {len(missing)} images in {self.img_dir} have no label "
                f"PNG of the same stem in {self.ann_dir}, e.g. {missing[:3]}"
            )
        self.images = images[:max_images] if max_images else images

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def label_path(self, index: int) -> Path:
        return self.ann_dir / f"{self.images[index].stem}.png"

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(Image.open(self.images[index]).convert("RGB"))
        label = np.asarray(Image.open(self.label_path(index)))
        if label.ndim != 2:
            raise UserError(f"{self.label_path(index)}: labels must be single-channel PNGs, got shape {label.shape}")
        if label.shape != image.shape[:2]:
            raise UserError(
                f"{self.label_path(index)}: label size {label.shape} differs from image size {image.shape[:2]}"
            )
        label = reduce_zero_label(label) if self.reduce_zero_label else label.astype(np.int64)
        return image, label


def class_palette(num_classes: int, seed: int = 0) -> list[list[int]]:
    """Deterministic colours for visualisations (and mm datasets, which want a palette)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_classes, 3)).tolist()

