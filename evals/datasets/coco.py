"""Reader for COCO-layout instance trees (the real COCO 2017 or generated ones).

Layout (the official one, which MMDetection's CocoDataset also reads)::

    <root>/annotations/instances_{train,val}2017.json
    <root>/{train,val}2017/*.jpg

Categories come from the annotation file, so trees with any set of classes load the same
way. Labels are contiguous indices ``0..K-1`` in increasing category-id order (the order
mmdet uses); ``category_ids[label]`` maps back for pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from evals.backbones.base import UserError

SPLIT_ALIASES = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of one split, with an error naming the expected layout."""
    if split not in SPLIT_ALIASES:
        raise UserError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    root = Path(root).expanduser()
    name = SPLIT_ALIASES[split]
    ann_file = root / "annotations" / f"instances_{name}.json"
    img_dir = root / name
    if not ann_file.is_file() or not img_dir.is_dir():
        raise UserError(
            f"evals/datasets/coco.py: {root} is not a COCO tree for split {name!r}. Expected "
            f"{ann_file} and the images in {img_dir}/. Pass --data the folder that holds "
            "annotations/ and train2017/ val2017/, or generate a synthetic tree with tcjepa-data."
        )
    return ann_file, img_dir


def load_coco_api(ann_file: str | Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing chatter
        return COCO(str(ann_file))


class COCOInstances(torch.utils.data.Dataset):
    """Items: (image uint8 RGB (H, W, 3), target dict).

    target: ``boxes`` float32 (N, 4) xyxy pixels, ``labels`` int64 (N,) contiguous 0-based,
    ``masks`` uint8 (N, H, W), ``iscrowd`` int64 (N,), ``image_id`` int.
    """

    def __init__(self, root: str | Path, split: str = "val", max_images: Optional[int] = None,
                 skip_empty: bool = False):
        self.ann_file, self.img_dir = coco_paths(root, split)
        self.coco = load_coco_api(self.ann_file)
        self.category_ids = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise UserError(f"evals/datasets/coco.py: {self.ann_file} defines no categories")
        self.classes = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.label_of_category = {c: i for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if skip_empty:  # training wants images with at least one usable object
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.image_ids = ids[:max_images] if max_images else ids
        if not self.image_ids:
            raise UserError(f"evals/datasets/coco.py: no images listed in {self.ann_file}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.img_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        image_id = self.image_ids[index]
        path = self.image_path(index)
        if not path.exists():
            raise UserError(f"evals/datasets/coco.py: {self.ann_file} lists {path}, which does not exist")
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        boxes, labels, masks, crowd = [], [], [], []
        for ann in self.coco.imgToAnns[image_id]:
            x, y, bw, bh = ann["bbox"]
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
            if x2 - x1 < 1 or y2 - y1 < 1:  # degenerate boxes break the box coder
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self.label_of_category[ann["category_id"]])
            masks.append(self.coco.annToMask(ann))
            crowd.append(int(ann.get("iscrowd", 0)))
        target = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8),
            "iscrowd": np.asarray(crowd, dtype=np.int64),
            "image_id": image_id,
        }
        return image, target

    def write_subset(self, path: str | Path) -> Path:
        """Write an annotation file holding only this reader's images (for tools that read the
        json themselves, e.g. mmdet's CocoMetric), keeping categories and the image order."""
        keep = set(self.image_ids)
        data = {
            "images": [self.coco.imgs[i] for i in self.image_ids],
            "annotations": [a for a in self.coco.dataset["annotations"] if a["image_id"] in keep],
            "categories": self.coco.dataset["categories"],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path
