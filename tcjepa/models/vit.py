"""JEPA encoder: timm's VisionTransformer without class token, with fixed 2-D sin-cos positions.

The state dict is exactly timm's (``patch_embed``, ``pos_embed``, ``blocks``, ``norm``), so an
exported encoder loads into ``timm.create_model('vit_base_patch16_224', class_token=False,
global_pool='avg', num_classes=0)`` unchanged. Two additions over timm:

- ``keep_idx``: the context encoder sees only the kept patches (gathered after positions);
- any input size divisible by the patch size, with sin-cos positions computed for that grid
  (exact, no interpolation, no class-token assumption).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

# name -> (embed_dim, depth, num_heads); the paper uses base/large/huge, the rest are for CPU.
VIT_ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_pico": (64, 2, 2),
    "vit_micro": (128, 4, 4),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}

# our arch + patch size -> timm model name, for users loading exports with timm.create_model
TIMM_NAMES = {
    ("vit_tiny", 16): "vit_tiny_patch16_224",
    ("vit_small", 16): "vit_small_patch16_224",
    ("vit_base", 16): "vit_base_patch16_224",
    ("vit_large", 16): "vit_large_patch16_224",
    ("vit_huge", 14): "vit_huge_patch14_224",
}


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@lru_cache(maxsize=16)
def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h * grid_w, dim) row-major, the MAE / I-JEPA layout: first half encodes the
    column (x), second half the row (y)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([sincos_1d(dim // 2, xs), sincos_1d(dim // 2, ys)], dim=1).float()


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, K) -> (B, K, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def key_padding_to_attn_mask(valid: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, N) True = real token -> SDPA boolean mask (B, 1, 1, N)."""
    return None if valid is None else valid[:, None, None, :]


def patch_grid(images: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """(rows, cols) of patches of a (..., H, W) batch; sizes that are no multiple of the patch
    size are an error rather than silently cropped."""
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch_size}")
    return h // patch_size, w // patch_size


class JEPAViT(VisionTransformer):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            class_token=False,
            global_pool="avg",
            fc_norm=False,  # I-JEPA normalises every token; timm's avg default would norm only the pool
            num_classes=0,
        )
        self.patch_embed.strict_img_size = False  # other sizes are fine: positions are recomputed
        grid_h, grid_w = self.patch_embed.grid_size
        self.pos_embed.data.copy_(sincos_2d(embed_dim, grid_h, grid_w)[None])
        self.pos_embed.requires_grad_(False)
        self.model_args = dict(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio,
        )

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def grid_size(self, x: torch.Tensor) -> tuple[int, int]:
        return patch_grid(x, self.patch_size)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        # Stored positions may be foreign (official checkpoints); resample them only when
        # they are not our own sin-cos, which we can compute exactly for any grid.
        return sincos_2d(self.embed_dim, *grid)[None].to(self.pos_embed)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid_size(x)
        x = self.patch_embed(x)
        return x + self.position_embedding(grid)

    def run_blocks(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        attn_mask = key_padding_to_attn_mask(valid)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask)
        return x

    def forward_features(
        self,
        x: torch.Tensor,
        keep_idx: Optional[torch.Tensor] = None,
        keep_valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) -> normed tokens (B, N, C), or (B, K, C) for the kept patches."""
        x = self.embed(x)
        if keep_idx is not None:
            x = gather_tokens(x, keep_idx)
        return self.norm(self.run_blocks(x, keep_valid))

    def forward_block_outputs(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each passed through the final norm (B, N, C)."""
        x = self.embed(x)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= len(self.blocks) - n:
                outs.append(self.norm(x))
        return outs


def build_encoder(name: str, img_size: int, patch_size: int, drop_path: float = 0.0) -> JEPAViT:
    if name not in VIT_ARCHS:
        raise ValueError(f"unknown encoder {name!r}; available: {sorted(VIT_ARCHS)}")
    dim, depth, heads = VIT_ARCHS[name]
    return JEPAViT(img_size, patch_size, dim, depth, heads, drop_path_rate=drop_path)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
