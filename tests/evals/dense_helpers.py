"""Fixtures for the dense-evaluation tests: a tiny random timm ViT behind the Backbone
interface, and tiny ADE20k / COCO trees of coloured rectangles written to disk.

Each object class has its own colour, so random frozen features separate the classes and a
trained linear head must beat an untrained one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evals.backbones.base import Backbone, BackboneSpec, available_backbones, register_backbone

CLASS_NAMES = ("red box", "green box", "blue box")
CLASS_COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230))


class TinyViTBackbone(Backbone):
    """A 2-block width-32 timm ViT with random weights, no class token (as I-JEPA)."""

    patch_size = 8
    embed_dim = 32
    image_size = 64
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, seed: int = 0):
        super().__init__()
        import timm

        torch.manual_seed(seed)
        self.vit = timm.models.vision_transformer.VisionTransformer(
            img_size=self.image_size, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=2,
            num_heads=2, mlp_ratio=2.0, class_token=False, global_pool="avg", num_classes=0,
            dynamic_img_size=True,
        )
        self.freeze()

    def protocol_info(self) -> dict:
        return {**super().protocol_info(), "depth": len(self.vit.blocks)}

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        maps = self.vit.forward_intermediates(x, indices=n, norm=True, output_fmt="NCHW", intermediates_only=True)
        return [m.permute(0, 2, 3, 1) for m in maps]


TINY_VIT_NAME = "dense-tests-tiny-vit"
if TINY_VIT_NAME not in available_backbones():  # so mm configs can name it by spec

    @register_backbone(TINY_VIT_NAME)
    def _build_tiny_vit(spec: BackboneSpec) -> TinyViTBackbone:
        """Tiny random timm ViT for the dense-evaluation tests."""
        return TinyViTBackbone(**spec.options)


def _rectangles(rng: np.random.Generator, height: int, width: int, max_objects: int):
    """A dark noisy image with 1..max_objects coloured rectangles; yields (image, [(cls, mask)])."""
    image = rng.integers(0, 40, size=(height, width, 3)).astype(np.uint8)
    objects = []
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(len(CLASS_NAMES)))
        h, w = rng.integers(height // 4, height // 2 + 1), rng.integers(width // 4, width // 2 + 1)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        mask = np.zeros((height, width), bool)
        mask[y:y + h, x:x + w] = True
        for other in objects:  # later objects occlude earlier ones
            other[1][mask] = False
        image[mask] = CLASS_COLOURS[cls]
        objects.append((cls, mask))
    return image, [(c, m) for c, m in objects if m.any()]


def write_ade_tree(root: Path, n_train: int = 6, n_val: int = 3, size=(64, 64), seed: int = 0,
                   with_classes_json: bool = True) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}: JPEG + PNG labels
    (0 = background/other, k = class k), plus classes.json. Returns the folder above it."""
    rng = np.random.default_rng(seed)
    data = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        (data / "images" / split).mkdir(parents=True, exist_ok=True)
        (data / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, objects = _rectangles(rng, *size, max_objects=3)
            label = np.zeros(size, np.uint8)
            for cls, mask in objects:
                label[mask] = cls + 1
            name = f"ADE_{split[:3]}_{i:08d}"
            Image.fromarray(image).save(data / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(data / "annotations" / split / f"{name}.png")
    if with_classes_json:
        (data / "classes.json").write_text(json.dumps(list(CLASS_NAMES)))
    return root


def write_coco_tree(root: Path, n_train: int = 4, n_val: int = 2, size=(64, 64), seed: int = 0) -> Path:
    """annotations/instances_{train,val}2017.json + {train,val}2017/*.jpg with RLE masks."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name, "supercategory": "box"} for i, name in enumerate(CLASS_NAMES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image, objects = _rectangles(rng, *size, max_objects=3)
            image_id = i + 1
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(root / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
            for cls, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                bbox = mask_utils.toBbox(rle).tolist()
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": cls + 1,
                                    "segmentation": rle, "area": float(mask.sum()), "bbox": bbox,
                                    "iscrowd": 0})
                ann_id += 1
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


# ----------------------------------------------------------------------------- pytest fixtures
# Imported by the dense-evaluation test modules (there is no shared conftest for them).
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def ade_tree(tmp_path_factory) -> Path:
    return write_ade_tree(tmp_path_factory.mktemp("ade"), n_train=8, n_val=4, size=(48, 64))


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory) -> Path:
    return write_coco_tree(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def tiny_backbone() -> TinyViTBackbone:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return TinyViTBackbone()
