"""ViTDet's simple feature pyramid (Li et al. 2022): four scales from one plain-ViT map.

From the single stride-``p`` map, deconvolutions make the finer scales and max-pooling the
coarser one; each scale then gets a 1x1 conv and a 3x3 conv, both followed by a channel
LayerNorm, and an extra max-pooled level on top feeds the RPN (as ViTDet's LastLevelMaxPool).
For ``p = 16`` the outputs have strides 4, 8, 16, 32 (+ 64). Patch sizes that are powers of
two reach the same strides with more or fewer deconvolutions; other patch sizes (DINOv2's 14)
are first resampled to a stride-16 grid, so detection heads always see the standard strides.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

STRIDES = (4, 8, 16, 32)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _rescale(channels: int, factor: float) -> tuple[nn.Module, int]:
    """Layers turning a map into one ``factor`` times larger; returns them and their out channels."""
    if factor >= 1:
        layers, c = [], channels
        for i in range(int(round(math.log2(factor)))):
            if i > 0:  # ViTDet: LN + GELU between successive deconvolutions
                layers += [LayerNorm2d(c), nn.GELU()]
            layers.append(nn.ConvTranspose2d(c, c // 2, kernel_size=2, stride=2))
            c //= 2
        return nn.Sequential(*layers), c
    k = int(round(1 / factor))
    return nn.MaxPool2d(kernel_size=k, stride=k), channels


class SimpleFeaturePyramid(nn.Module):
    """(B, C, h, w) map at stride ``patch_size`` -> list of (B, out_channels, H/s, W/s) for
    s in ``strides`` plus, with ``extra_pool_level``, one more at twice the last stride."""

    def __init__(self, in_channels: int, patch_size: int, out_channels: int = 256,
                 strides: Sequence[int] = STRIDES, extra_pool_level: bool = True):
        super().__init__()
        self.patch_size = patch_size
        # Feature stride after an optional resampling of non-power-of-two patch grids.
        self.base_stride = patch_size if _is_power_of_two(patch_size) else 16
        for s in strides:
            if not _is_power_of_two(s) or s < 1:
                raise ValueError(f"pyramid strides must be powers of two, got {tuple(strides)}")
            if self.base_stride / s > 2 ** 3:
                raise ValueError(f"stride {s} needs more than 3 deconvolutions from stride {self.base_stride}")
        self.strides = tuple(strides) + ((strides[-1] * 2,) if extra_pool_level else ())
        self.extra_pool_level = extra_pool_level
        self.out_channels = out_channels
        self.scales = nn.ModuleList()
        for s in strides:
            rescale, c = _rescale(in_channels, self.base_stride / s)
            self.scales.append(nn.Sequential(
                rescale,
                nn.Conv2d(c, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), LayerNorm2d(out_channels),
            ))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.base_stride != self.patch_size:
            size = [max(round(n * self.patch_size / self.base_stride), 1) for n in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        outs = [scale(x) for scale in self.scales]
        if self.extra_pool_level:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
