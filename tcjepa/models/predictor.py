"""The JEPA predictor: a narrow ViT over context tokens plus one mask token per target patch.

I-JEPA block (text off):  x = x + SelfAttn(LN x);                        x = x + MLP(LN x)
TC-JEPA block (xattn):    x = x + SelfAttn(LN x); x = x + TextXAttn(LN x, t); x = x + MLP(LN x)

With N captions the per-caption results are pooled (max by default) after every layer:
- ``caption_pool_point='xattn'``: max_n(x + a_n) = x + max_n(a_n), so only the cross-attention
  runs per caption;
- ``caption_pool_point='block'``: each caption runs the whole block on the shared input, then
  pool. Self-attention sees the same input for every caption, so it runs once (exactly equal
  to running it N times); the cross-attention and MLP run per caption.

Token layout: the predictor batch is (B*M, T, D), image-major, T = context + target tokens
of one target block. For text operations it is viewed as (B, M*T, D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Attention
from torch import nn

from .conditioning import AdaLNModulation, CaptionPool, FeatureConditioner, TextCrossAttention, mean_caption_vector
from .vit import gather_tokens, key_padding_to_attn_mask, sincos_2d


@dataclass
class PredictorOutput:
    pred: torch.Tensor  # (B, M, Kt, E) predicted target features
    cosines: list[torch.Tensor] = field(default_factory=list)  # per conditioned layer (B, N, Q, S)
    attention: list[torch.Tensor] = field(default_factory=list)  # (B, N, Q, S), only if requested
    token_valid: Optional[torch.Tensor] = None  # (B, Q) or None when every token is real
    word_mask: Optional[torch.Tensor] = None  # (B, N, S) mask of the keys the cosines used


@dataclass
class TextInput:
    features: torch.Tensor  # (B, N, S, d_t)
    word_mask: torch.Tensor  # (B, N, S) True = real word
    caption_vec: Optional[torch.Tensor] = None  # (B, N, d_t), for caption-level variants


class PredictorBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        text_dim: Optional[int] = None,
        conditioning: str = "xattn",
        caption_pool: str = "max",
        pool_point: str = "xattn",
        xattn_scale: bool = True,
        grounding_keys: str = "raw",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.conditioning = conditioning if text_dim is not None else None
        self.pool_point = pool_point
        if self.conditioning in ("xattn", "caption_xattn"):
            self.norm_x = nn.LayerNorm(dim, eps=1e-6)
            self.xattn = TextCrossAttention(dim, text_dim, scale=xattn_scale, grounding_keys=grounding_keys)
        elif self.conditioning == "adaln":
            self.adaln = AdaLNModulation(dim, text_dim)
        if self.conditioning is not None:
            self.pool = CaptionPool(caption_pool, dim)

    def forward(
        self,
        x: torch.Tensor,
        num_blocks: int,
        attn_mask: Optional[torch.Tensor] = None,
        text: Optional[TextInput] = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """x (B*M, T, D) -> (x, cosines, attention): the new (B*M, T, D) tokens and, for a
        text cross-attention layer, the (B, N, Q, S) patch-word cosines and (if asked) the
        attention, else None. ``text`` None means this layer is not conditioned.

        The maps are returned, not appended to a caller's list: FSDP2 rebuilds a block's
        arguments when they hold tensors that need gradients, so an accumulator passed in
        would collect only the first layer's map."""
        if text is None or self.conditioning is None:
            x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
            return x + self.mlp(self.norm2(x)), None, None
        if self.conditioning == "adaln":
            return self._forward_adaln(x, num_blocks, attn_mask, text), None, None

        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        BM, T, D = x.shape
        B = BM // num_blocks
        h = self.norm_x(x).reshape(B, num_blocks * T, D)
        if self.pool_point == "xattn" and self.pool.kind == "max" and not return_attention:
            pooled, cosines = self.xattn.max_over_captions(h, text.features, text.word_mask)
            x = x + pooled.reshape(BM, T, D)
            return x + self.mlp(self.norm2(x)), cosines, None
        a, probs, cosines = self.xattn(h, text.features, text.word_mask, return_attention, return_cosines=True)
        if self.pool_point == "xattn":
            # Pooling over captions first keeps a in its (B, N, M*T, D) layout: no transpose copy.
            x = x + self.pool(a).reshape(BM, T, D)
            return x + self.mlp(self.norm2(x)), cosines, probs
        N = a.shape[1]
        a = a.reshape(B, N, num_blocks, T, D).transpose(1, 2).reshape(BM, N, T, D)
        xn = x.unsqueeze(1) + a  # (BM, N, T, D): each caption's own block state
        xn = xn + self.mlp(self.norm2(xn))
        return self.pool(xn), cosines, probs

    def _forward_adaln(self, x, num_blocks, attn_mask, text: TextInput) -> torch.Tensor:
        BM, T, D = x.shape
        B = BM // num_blocks
        mods = self.adaln(text.caption_vec)  # six (B, N, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            m.repeat_interleave(num_blocks, dim=0) for m in mods
        )  # (BM, N, 1, D)
        N = shift1.shape[1]
        xn = x.unsqueeze(1).expand(BM, N, T, D)
        h = self.norm1(xn) * (1 + scale1) + shift1
        mask = None if attn_mask is None else attn_mask.repeat_interleave(N, dim=0)
        sa = self.attn(h.reshape(BM * N, T, D), attn_mask=mask).reshape(BM, N, T, D)
        xn = xn + gate1 * sa
        xn = xn + gate2 * self.mlp(self.norm2(xn) * (1 + scale2) + shift2)
        return self.pool(xn)


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
        if conditioning not in ("xattn", "caption_xattn", "adaln", "feature"):
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
        self.blocks = nn.ModuleList(
            PredictorBlock(
                dim, num_heads, mlp_ratio,
                text_dim=text_dim if i in self.conditioned_layers else None,
                conditioning=conditioning, caption_pool=caption_pool,
                pool_point=caption_pool_point, xattn_scale=xattn_scale,
                grounding_keys=grounding_keys,
            )
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
            if hasattr(blk, "adaln"):
                nn.init.zeros_(blk.adaln.net[1].weight)
                nn.init.zeros_(blk.adaln.net[1].bias)

    def forward(
        self,
        context: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        context_valid: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        word_mask: Optional[torch.Tensor] = None,
        return_attention: bool = False,
    ) -> PredictorOutput:
        """context (B, Kc, E) encoder outputs at context_idx (B, Kc); target_idx (B, M, Kt);
        text (B, N, S, d_t) + word_mask (B, N, S), required iff the predictor has text."""
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

        out = PredictorOutput(pred=x.new_empty(0))
        attn_mask = None
        if context_valid is not None:
            token_valid = torch.cat(
                [context_valid.unsqueeze(1).expand(B, M, Kc), context_valid.new_ones(B, M, Kt)], dim=2
            )
            out.token_valid = token_valid.reshape(B, M * (Kc + Kt))
            attn_mask = key_padding_to_attn_mask(token_valid.reshape(B * M, Kc + Kt))

        text_in = None
        if text is not None:
            text = text.to(x.dtype)
            caption_vec = mean_caption_vector(text, word_mask)
            if self.conditioning == "caption_xattn":
                # Caption-level ablation: one key per caption, the mean of its words.
                text_in = TextInput(caption_vec.unsqueeze(2), word_mask.any(-1, keepdim=True), caption_vec)
            else:
                text_in = TextInput(text, word_mask, caption_vec)
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

