"""Backbone around our ``JEPAViT`` encoder, shared by the ``tcjepa`` and ``ijepa`` plugins.

JEPA encoders have no class token, so the global vector is the mean of the patch tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from tcjepa.models.vit import JEPAViT, sincos_2d

from .base import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StoredPositionsViT(JEPAViT):
    """A JEPAViT whose position table comes from a checkpoint rather than from our sin-cos.

    At the stored grid the table is used as is. At other grids the exact sin-cos is used
    when the table *is* the 2-D sin-cos (official I-JEPA); a learned or converted table
    is resampled bicubically to the exact target grid (no class-token slot, non-square
    grids allowed), as HF ``IJepaModel`` does.
    """

    positions_are_sincos: bool = True

    def detect_sincos_positions(self) -> bool:
        grid_h, grid_w = self.patch_embed.grid_size
        reference = sincos_2d(self.embed_dim, grid_h, grid_w)[None]
        self.positions_are_sincos = torch.allclose(self.pos_embed.detach().float(), reference, atol=1e-4)
        return self.positions_are_sincos

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        native = tuple(self.patch_embed.grid_size)
        if tuple(grid) == native or self.positions_are_sincos:
            return super().position_embedding(grid)
        return resample_abs_pos_embed(
            self.pos_embed, new_size=list(grid), old_size=list(native), num_prefix_tokens=0, antialias=False
        )


def final_norm(encoder: JEPAViT) -> nn.Module:
    """The encoder's last LayerNorm.

    timm moves it from ``norm`` to ``fc_norm`` when ``global_pool='avg'`` (unless built with
    ``fc_norm=False``); JEPA features are always taken after it.
    """
    return encoder.fc_norm if isinstance(encoder.norm, nn.Identity) else encoder.norm


def final_norm_prefix(encoder: JEPAViT) -> str:
    return "fc_norm." if isinstance(encoder.norm, nn.Identity) else "norm."


class JEPAViTBackbone(Backbone):
    global_vector_kind = "mean of patch tokens (no class token)"

    def __init__(
        self,
        encoder: JEPAViT,
        image_size: Optional[int] = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        source: Optional[dict] = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.embed_dim = encoder.embed_dim
        self.native_image_size = int(encoder.patch_embed.img_size[0])
        self.image_size = int(image_size or self.native_image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = dict(source or {})
        self._final_norm = final_norm(encoder)
        self._norm_inside = not isinstance(encoder.norm, nn.Identity)

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        grid_h, grid_w = self.encoder.grid_size(x)
        outputs = self.encoder.forward_block_outputs(x, n)
        if not self._norm_inside:
            outputs = [self._final_norm(t) for t in outputs]
        return [t.reshape(t.shape[0], grid_h, grid_w, t.shape[-1]) for t in outputs]

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        positions = "exact 2-D sin-cos at every grid"
        if isinstance(self.encoder, StoredPositionsViT) and not self.encoder.positions_are_sincos:
            positions = "stored table, bicubic resampling to the exact grid (no class token)"
        info.update(
            native_image_size=self.native_image_size,
            depth=len(self.encoder.blocks),
            num_heads=self.encoder.blocks[0].attn.num_heads,
            position_embedding=positions,
            **self.source,
        )
        return info
