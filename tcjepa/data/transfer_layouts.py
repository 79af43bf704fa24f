"""Synthetic scenes in the official layouts of the paper's transfer sets, for tests and demos.

    write_cifar100(out)   out/cifar-100-python/{train,test,meta}: CIFAR's python-pickle batches
                          (protocol 2 dicts with bytes keys, a uint8 (N, 3072) ``data`` array)
    write_inat2018(out)   out/train2018.json, val2018.json, categories.json and
                          train_val2018/<supercategory>/<category id>/<hash>.jpg
    write_transfer_sets(out)  all three: out/cifar-100-python, out/inat2018, out/VOCdevkit
    write_voc2012(out)    out/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette PNGs,
                          255 on object borders), ImageSets/Segmentation/{train,val}.txt}
                          + classes.json (generated trees have 7 classes, not VOC's 21)

Labels follow the scene generator: the scene class (12) for classification, the shape of
each object (6, + background) for segmentation. Every file is a pure function of the seed.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from tcjepa.data.layouts import encode_jpeg
from tcjepa.data.scenes import SCENE_CLASSES, SHAPES, generate_scene

VOC_IGNORE = 255


def _scene(seed: int, split: str, index: int, size: int):
    return generate_scene(seed, split, index, image_size=size, num_captions=1)


def write_cifar100(out: str | Path, train: int = 40, test: int = 20, seed: int = 0) -> Path:
    """CIFAR-100's python version: the scenes rendered at 32 px, scene class as fine label,
    its shape as coarse label."""
    root = Path(out) / "cifar-100-python"
    root.mkdir(parents=True, exist_ok=True)
    for name, split, n in (("train", "train", train), ("test", "val", test)):
        scenes = [_scene(seed, split, i, 32) for i in range(n)]
        # CIFAR rows: the 1024 red values, then green, then blue, each plane row-major.
        data = np.stack([s.image.transpose(2, 0, 1).reshape(-1) for s in scenes]).astype(np.uint8)
        batch = {
            b"batch_label": f"{name}ing batch 1 of 1".encode() if name == "train" else b"testing batch 1 of 1",
            b"filenames": [f"scene_{split}_{i:05d}.png".encode() for i in range(n)],
            b"fine_labels": [s.label for s in scenes],
            b"coarse_labels": [s.label // (len(SCENE_CLASSES) // len(SHAPES)) for s in scenes],
            b"data": data,
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [c.encode() for c in SCENE_CLASSES],
            b"coarse_label_names": [s.encode() for s in SHAPES]}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_inat2018(out: str | Path, train: int = 40, val: int = 20, seed: int = 0, size: int = 64) -> Path:
    """iNaturalist 2018's layout: COCO-style JSON per split (images, annotations with one
    category each, categories), images under train_val2018/<supercategory>/<id>/."""
    root = Path(out)
    categories = [{"id": i, "name": name, "supercategory": name.split("_")[0].capitalize(),
                   "kingdom": "Shapes"} for i, name in enumerate(SCENE_CLASSES)]
    for split, n in (("train", train), ("val", val)):
        images, annotations = [], []
        for i in range(n):
            scene = _scene(seed, split, i, size)
            category = categories[scene.label]
            digest = hashlib.md5(f"{seed}-{split}-{i}".encode()).hexdigest()
            file_name = f"train_val2018/{category['supercategory']}/{category['id']}/{digest}.jpg"
            (root / file_name).parent.mkdir(parents=True, exist_ok=True)
            (root / file_name).write_bytes(encode_jpeg(scene.image))
            image_id = len(images) + (0 if split == "train" else 10**6)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                           "license": 0, "rights_holder": "generated"})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": category["id"]})
        document = {"info": {"description": "tcjepa synthetic scenes, iNat2018 layout"}, "licenses": [],
                    "images": images, "annotations": annotations,
                    "categories": [{"id": c["id"], "name": c["name"]} for c in categories]}
        (root / f"{split}2018.json").write_text(json.dumps(document))
    (root / "categories.json").write_text(json.dumps(categories))
    return root


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class index), 256 RGB triples flattened."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def voc_label(semantic: np.ndarray) -> np.ndarray:
    """Scene semantic map (0 background, k shape) with VOC's 255 on every pixel whose
    4-neighbourhood holds another class (VOC marks object borders as 'void')."""
    label = semantic.copy()
    border = np.zeros(semantic.shape, bool)
    border[1:] |= semantic[1:] != semantic[:-1]
    border[:-1] |= semantic[:-1] != semantic[1:]
    border[:, 1:] |= semantic[:, 1:] != semantic[:, :-1]
    border[:, :-1] |= semantic[:, :-1] != semantic[:, 1:]
    label[border] = VOC_IGNORE
    return label


def write_voc2012(out: str | Path, train: int = 16, val: int = 8, seed: int = 0, size: int = 64) -> Path:
    """VOCdevkit/VOC2012 with JPEG images, palette-PNG class labels and the segmentation
    image sets; returns the VOCdevkit folder's parent."""
    voc = Path(out) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for split, n in (("train", train), ("val", val)):
        ids = []
        for i in range(n):
            scene = _scene(seed, split, i, size)
            image_id = f"2012_{(i if split == 'train' else 500000 + i):06d}"
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(encode_jpeg(scene.image))
            png = Image.fromarray(voc_label(scene.semantic_map()), mode="P")
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
            ids.append(image_id)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "classes.json").write_text(json.dumps({"classes": ["background", *SHAPES]}))
    return Path(out)


def write_transfer_sets(out: str | Path, train: int = 200, val: int = 100, seed: int = 0, size: int = 64) -> dict:
    """CIFAR-100, iNat2018 and VOC 2012 trees of generated scenes under ``out``; their roots."""
    from tcjepa.data.errors import DataError

    if train < 1 or val < 1:
        raise DataError(f"--train and --val must be >= 1, got train={train} val={val}")
    if size < 32:
        raise DataError(f"--image-size must be >= 32 px, got {size}")
    out = Path(out)
    return {"cifar100": write_cifar100(out, train, val, seed),
            "inat18": write_inat2018(out / "inat2018", train, val, seed, size),
            "voc": write_voc2012(out, train, val, seed, size)}
