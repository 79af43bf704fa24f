"""The JEPA predictor: a narrow ViT over context tokens plus one mask token per target patch.

Its layers come from the block family in ``blocks.py`` (a plain I-JEPA block, and one class per
conditioning kind, chosen by ``BLOCKS[model.conditioning]`` for the conditioned layers).

Token layout: the predictor batch is (B*M, T, D), image-major, T = context + target tokens
of one target block. For text operations it is viewed as (B, M*T, D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from timm.layers import trunc_normal_
from torch import nn

from .blocks import BLOCKS, AdaLNBlock, PredictorBlock, TextInput
from .conditioning import CaptionPool, FeatureConditioner, mean_caption_vector
from .vit import gather_tokens, key_padding_to_attn_mask, sincos_2d

__all__ = ["Predictor", "PredictorOutput", "TextInput"]


@dataclass
class PredictorOutput:
    pred: torch.Tensor  # (B, M, Kt, E) predicted target features
    cosines: list[torch.Tensor] = field(default_factory=list)  # per conditioned layer (B, N, Q, S)
    attention: list[torch.Tensor] = field(default_factory=list)  # (B, N, Q, S), only if requested
    token_valid: Optional[torch.Tensor] = None  # (B, Q) or None when every token is real
    target_valid: Optional[torch.Tensor] = None  # (B, M, Kt) or None when every target token is real
    word_mask: Optional[torch.Tensor] = None  # (B, N, S) mask of the keys the cosines used


class Predictor(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        grid_size: tuple[int, int],
        dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        text_dim: Optional[int] = None,
        conditioning: str = "xattn",
        conditioned_layers: Optional[list[int]] = None,
        caption_pool: str = "max",
        caption_pool_point: str = "xattn",
        xattn_scale: bool = True,
        grounding_keys: str = "raw",
    ):
        super().__init__()
        if conditioning not in BLOCKS:
            raise ValueError(f"unknown conditioning {conditioning!r}")
        self.grid_size = tuple(grid_size)
        self.text_dim = text_dim
        self.conditioning = conditioning if text_dim is not None else None
        layers = list(range(depth)) if conditioned_layers is None else list(conditioned_layers)
        if any(not -depth <= i < depth for i in layers):
            raise ValueError(f"conditioned_layers {layers} out of range for predictor depth {depth}")
        block_text = self.conditioning in ("xattn", "caption_xattn", "adaln")
        self.conditioned_layers = {i % depth for i in layers} if block_text else set()  # -1 = the last layer

        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, *self.grid_size)[None], persistent=False)
        self.feature_cond = FeatureConditioner(dim, text_dim) if self.conditioning == "feature" else None
        self.feature_pool = CaptionPool(caption_pool, dim) if self.feature_cond is not None else None
        self.block_class = BLOCKS[conditioning] if self.conditioning is not None else PredictorBlock
        text_options = dict(text_dim=text_dim, caption_pool=caption_pool, pool_point=caption_pool_point,
                            xattn_scale=xattn_scale, grounding_keys=grounding_keys)
        self.blocks = nn.ModuleList(
            self.block_class(dim, num_heads, mlp_ratio, **text_options) if i in self.conditioned_layers
            else PredictorBlock(dim, num_heads, mlp_ratio)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # I-JEPA rescales residual projections by depth (stabilises deeper predictors).
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))
        for blk in self.blocks:  # AdaLN starts as the identity (after the generic init above)
            if isinstance(blk, AdaLNBlock):
                blk.reset_modulation()

    def forward(
        self,
        context: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        context_valid: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        word_mask: Optional[torch.Tensor] = None,
        return_attention: bool = False,
        target_valid: Optional[torch.Tensor] = None,
    ) -> PredictorOutput:
        """context (B, Kc, E) encoder outputs at context_idx (B, Kc); target_idx (B, M, Kt);
        text (B, N, S, d_t) + word_mask (B, N, S), required iff the predictor has text.
        ``context_valid`` / ``target_valid`` mark real tokens of padded contexts / target blocks:
        padding is never attended to, and the other tokens' outputs are those of the unpadded
        batch."""
        B, M, Kt = target_idx.shape
        Kc = context_idx.shape[1]
        if (text is None) != (self.conditioning is None):
            raise ValueError(
                "this predictor is " + ("text-conditioned: pass text and word_mask" if text is None
                                        else "unconditioned (I-JEPA): it takes no text")
            )
        pos = self.pos_embed.expand(B, -1, -1).to(context.dtype)
        ctx = self.embed(context) + gather_tokens(pos, context_idx)  # (B, Kc, D)
        tgt = self.mask_token.to(ctx.dtype) + gather_tokens(pos, target_idx.reshape(B, M * Kt))
        D = ctx.shape[-1]
        x = torch.cat(
            [ctx.unsqueeze(1).expand(B, M, Kc, D), tgt.reshape(B, M, Kt, D)], dim=2
        ).reshape(B * M, Kc + Kt, D)

        out = PredictorOutput(pred=x.new_empty(0), target_valid=target_valid)
        attn_mask = None
        if context_valid is not None or target_valid is not None:
            ctx_valid = (context_valid.unsqueeze(1).expand(B, M, Kc) if context_valid is not None
                         else target_valid.new_ones(B, M, Kc))
            tgt_valid = target_valid if target_valid is not None else context_valid.new_ones(B, M, Kt)
            token_valid = torch.cat([ctx_valid, tgt_valid], dim=2)
            out.token_valid = token_valid.reshape(B, M * (Kc + Kt))
            attn_mask = key_padding_to_attn_mask(token_valid.reshape(B * M, Kc + Kt))

        text_in = None
        if text is not None:
            text = text.to(x.dtype)
            caption_vec = mean_caption_vector(text, word_mask)
            text_in = self.block_class.text_input(text, word_mask, caption_vec)
            out.word_mask = text_in.word_mask
            if self.feature_cond is not None:
                xq = x.reshape(B, M * (Kc + Kt), D)
                x = self.feature_pool(self.feature_cond(xq, caption_vec)).reshape(B * M, Kc + Kt, D)

        for i, blk in enumerate(self.blocks):
            x, cosines, attention = blk(
                x, M, attn_mask, text=text_in if i in self.conditioned_layers else None,
                return_attention=return_attention,
            )
            if cosines is not None:
                out.cosines.append(cosines)
            if attention is not None:
                out.attention.append(attention)
        x = self.norm(x)[:, Kc:]
        out.pred = self.proj(x).reshape(B, M, Kt, -1)
        return out

