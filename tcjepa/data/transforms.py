"""Image transforms for pretraining and evaluation.

Pretraining follows I-JEPA: RandomResizedCrop (scale from the config), no flip, no colour
jitter, ImageNet mean/std. The crop takes an explicit ``torch.Generator`` that the dataset
seeds from (seed, epoch, index): a resumed run, or a run with another worker count, sees the
same crops.
"""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    return F.normalize(F.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


class PretrainTransform:
    """RandomResizedCrop -> float tensor normalised with ImageNet statistics.

    ``generator`` makes the crop reproducible; without it the global torch RNG is used.
    """

    takes_generator = True  # datasets pass a per-sample generator to transforms that declare this

    def __init__(self, image_size: int, crop_scale: tuple[float, float] = (0.3, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale={crop_scale} must satisfy 0 < low <= high <= 1")
        self.image_size = image_size
        self.scale = tuple(crop_scale)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(top, left, h, w) as torchvision's RandomResizedCrop.get_params, with our generator."""
        area = width * height
        for _ in range(10):
            u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target_area = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(self.log_ratio[0] + u[1] * (self.log_ratio[1] - self.log_ratio[0]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        # Fallback (as torchvision): central crop with the ratio clamped into range.
        in_ratio = width / height
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if in_ratio < lo:
            w, h = width, int(round(width / lo))
        elif in_ratio > hi:
            w, h = int(round(height * hi)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, h, w = self.crop_box(img.width, img.height, generator)
        img = F.resized_crop(img, top, left, h, w, [self.image_size, self.image_size],
                             interpolation=InterpolationMode.BICUBIC, antialias=True)
        return to_normalized_tensor(img)

    def __repr__(self) -> str:
        return f"PretrainTransform(image_size={self.image_size}, crop_scale={self.scale})"


class EvalTransform:
    """Resize the short side to image_size / crop_pct, centre crop image_size, normalise."""

    def __init__(self, image_size: int, crop_pct: float = 0.875):
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.image_size = image_size
        self.resize = int(math.floor(image_size / crop_pct))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = F.resize(img, self.resize, interpolation=InterpolationMode.BICUBIC, antialias=True)
        return to_normalized_tensor(F.center_crop(img, [self.image_size, self.image_size]))

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, resize={self.resize})"
