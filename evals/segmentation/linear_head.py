"""The linear segmentation head (BatchNorm + 1x1 conv on patch tokens) and the feature plumbing
shared by the pure-torch engine and the MMSegmentation adapter, so both compute the same thing.

Parameter names (``bn``, ``conv_seg``) match MMSegmentation's decode heads, so a head trained in
one engine loads into the other with ``load_state_dict``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evals.backbones.base import Backbone


def pad_to_patch_multiple(images: torch.Tensor, patch_size: int, value: float = 0.0) -> torch.Tensor:
    """Pad bottom/right so the patch grid covers the whole image (0 = the mean pixel after
    normalisation, as MMSegmentation pads)."""
    h, w = images.shape[-2:]
    ph, pw = math.ceil(h / patch_size) * patch_size - h, math.ceil(w / patch_size) * patch_size - w
    return F.pad(images, (0, pw, 0, ph), value=value) if ph or pw else images


@torch.no_grad()
def backbone_feature_maps(backbone: Backbone, images: torch.Tensor, layers: int) -> list[torch.Tensor]:
    """Frozen features of the last ``layers`` blocks as (B, C, h, w) maps, oldest first.

    ``images`` are normalised (B, 3, H, W); H and W need not be multiples of the patch size.
    """
    x = pad_to_patch_multiple(images, backbone.patch_size)
    return [f.permute(0, 3, 1, 2).contiguous() for f in backbone.forward_intermediates(x, layers)]


def upsample_logits(logits: torch.Tensor, size: Sequence[int], patch_size: int) -> torch.Tensor:
    """Patch-grid logits -> pixel logits of ``size``.

    Upsample to the padded image the grid was computed on, then crop the padding, so the
    logits stay aligned with pixels when the image is not a multiple of the patch size.
    When it is, this is exactly one bilinear resize (``align_corners=False``, as mmseg).
    """
    h, w = logits.shape[-2:]
    full = (h * patch_size, w * patch_size)
    out = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
    return out[..., : size[0], : size[1]]


class LinearSegmentationHead(nn.Module):
    """BatchNorm + 1x1 conv over the channel-concatenation of one or more feature maps."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # mmseg's decode-head init, so both engines start from the same distribution.
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feature_maps[0].shape[-2:]
        maps = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                for f in feature_maps]
        return self.conv_seg(self.bn(torch.cat(maps, dim=1)))
