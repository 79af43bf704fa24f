"""Reader for iNaturalist 2018 (the official release's layout).

Layout::

    train2018.json, val2018.json   COCO-style: "images" (id, file_name), "annotations"
                                   (image_id, category_id: one per image), "categories"
    categories.json                optional: the full category list (id, name, taxonomy)
    train_val2018/<supercategory>/<category id>/<hash>.jpg

Labels are category ids mapped to 0..K-1 in id order (for iNat2018 the ids are 0..8141,
so label == id), one mapping for both splits. ``write_inat2018`` writes this from scenes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

from evals.datasets.imagenet import DatasetLayoutError, ImageFiles

SPLITS = ("train", "val")


def _read_json(path: Path):
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing; an iNat2018 folder holds train2018.json and val2018.json "
                                 "next to train_val2018/")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetLayoutError(f"{path}: not valid JSON ({e})") from None


def read_categories(root: Path) -> list[dict]:
    """categories.json if present, else the train annotation file's own list; sorted by id."""
    path = root / "categories.json"
    categories = _read_json(path) if path.is_file() else _read_json(root / "train2018.json").get("categories")
    source = path if path.is_file() else root / "train2018.json"
    if not isinstance(categories, list) or not categories or not all(isinstance(c, dict) and "id" in c
                                                                      for c in categories):
        raise DatasetLayoutError(f"{source}: needs a non-empty list of categories with an 'id' each")
    return sorted(categories, key=lambda c: c["id"])


class INat2018(ImageFiles):
    """(image, label) pairs of one split; ``transform`` maps a PIL image to a tensor."""

    def __init__(self, root: str | Path, split: str, transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise DatasetLayoutError(f"iNat2018 split must be one of {SPLITS}, got {split!r}")
        self.root, self.split, self.transform = Path(root).expanduser(), split, transform
        self.ann_file = self.root / f"{split}2018.json"
        document = _read_json(self.ann_file)
        categories = read_categories(self.root)
        self.classes = [str(c.get("name", c["id"])) for c in categories]
        index_of = {c["id"]: i for i, c in enumerate(categories)}
        self.samples = self._samples(document, index_of)
        missing = [p for p, _ in self.samples if not p.is_file()]
        if missing:
            raise DatasetLayoutError(f"{self.ann_file}: {len(missing)} listed images are not on disk, "
                                     f"e.g. {missing[0]}")

    def _samples(self, document: dict, index_of: dict) -> list[tuple[Path, int]]:
        images, annotations = document.get("images"), document.get("annotations")
        if not isinstance(images, list) or not images or not isinstance(annotations, list):
            raise DatasetLayoutError(f"{self.ann_file}: needs non-empty 'images' and an 'annotations' list")
        category_of: dict = {}
        for ann in annotations:
            if ann.get("image_id") in category_of:
                raise DatasetLayoutError(f"{self.ann_file}: image {ann['image_id']} has several annotations; "
                                         "iNat gives each image one category")
            category_of[ann.get("image_id")] = ann.get("category_id")
        samples = []
        for image in images:
            category = category_of.get(image.get("id"))
            if category not in index_of:
                problem = "no annotation" if category is None else f"unknown category {category}"
                raise DatasetLayoutError(f"{self.ann_file}: image {image.get('id')} ({image.get('file_name')}): "
                                         f"{problem}")
            samples.append((self.root / image["file_name"], index_of[category]))
        return samples

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.ann_file.read_bytes())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]
