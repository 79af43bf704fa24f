"""The predictor's block family: a plain I-JEPA block and one subclass per conditioning kind.

    PredictorBlock   x = x + SelfAttn(LN x);                           x = x + MLP(LN x)
    XAttnBlock       x = x + SelfAttn(LN x); x = x + TextXAttn(LN x, t); x = x + MLP(LN x)
    AdaLNBlock       DiT-style shift / scale / gate of both branches from the mean caption

``BLOCKS[conditioning]`` is the class of a conditioned layer (``model.conditioning``); layers
without text, and every layer of ``feature`` conditioning (which acts once, on the predictor's
input), are plain blocks. ``caption_xattn`` is the XAttn block over one key per caption, the
mean of its words (``CaptionXAttnBlock.text_input`` builds it).

With N captions the per-caption results are pooled (max by default) after every layer:
- ``caption_pool_point='xattn'``: max_n(x + a_n) = x + max_n(a_n), so only the cross-attention
  runs per caption;
- ``caption_pool_point='block'``: each caption runs the whole block on the shared input, then
  pool. Self-attention sees the same input for every caption, so it runs once (exactly equal
  to running it N times); the cross-attention and MLP run per caption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from .conditioning import AdaLNModulation, CaptionPool, TextCrossAttention

BlockOutput = tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]


@dataclass
class TextInput:
    features: torch.Tensor  # (B, N, S, d_t)
    word_mask: torch.Tensor  # (B, N, S) True = real word
    caption_vec: Optional[torch.Tensor] = None  # (B, N, d_t), for caption-level variants


class PredictorBlock(nn.Module):
    """The I-JEPA block. Subclasses add a text path and keep these parameter names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, **_unused_text_options):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    @staticmethod
    def text_input(text: torch.Tensor, word_mask: torch.Tensor, caption_vec: torch.Tensor) -> TextInput:
        """What this kind of block reads of the captions (words, by default)."""
        return TextInput(text, word_mask, caption_vec)

    def forward(self, x: torch.Tensor, num_blocks: int, attn_mask: Optional[torch.Tensor] = None,
                text: Optional[TextInput] = None, return_attention: bool = False) -> BlockOutput:
        """x (B*M, T, D) -> (x, cosines, attention): the new (B*M, T, D) tokens and, for a
        text cross-attention layer, the (B, N, Q, S) patch-word cosines and (if asked) the
        attention, else None. ``text`` None means this layer is not conditioned.

        The maps are returned, not appended to a caller's list: FSDP2 rebuilds a block's
        arguments when they hold tensors that need gradients, so an accumulator passed in
        would collect only the first layer's map."""
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x)), None, None


class XAttnBlock(PredictorBlock):
    """Self-attention, then single-head cross-attention to each caption's words, then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, text_dim: int,
                 caption_pool: str = "max", pool_point: str = "xattn", xattn_scale: bool = True,
                 grounding_keys: str = "raw"):
        super().__init__(dim, num_heads, mlp_ratio)
        self.pool_point = pool_point
        self.norm_x = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = TextCrossAttention(dim, text_dim, scale=xattn_scale, grounding_keys=grounding_keys)
        self.pool = CaptionPool(caption_pool, dim)

    def forward(self, x, num_blocks, attn_mask=None, text=None, return_attention=False) -> BlockOutput:
        if text is None:
            return super().forward(x, num_blocks, attn_mask)
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


class CaptionXAttnBlock(XAttnBlock):
    """Caption-level ablation: one key per caption, the mean of its words."""

    @staticmethod
    def text_input(text: torch.Tensor, word_mask: torch.Tensor, caption_vec: torch.Tensor) -> TextInput:
        return TextInput(caption_vec.unsqueeze(2), word_mask.any(-1, keepdim=True), caption_vec)


class AdaLNBlock(PredictorBlock):
    """Both branches modulated by the mean caption vector, one pass per caption, then pooled."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, text_dim: int,
                 caption_pool: str = "max", **_unused_text_options):
        super().__init__(dim, num_heads, mlp_ratio)
        self.adaln = AdaLNModulation(dim, text_dim)
        self.pool = CaptionPool(caption_pool, dim)

    def reset_modulation(self) -> None:
        """Start as the identity (the predictor's generic init overwrites the zeros)."""
        nn.init.zeros_(self.adaln.net[1].weight)
        nn.init.zeros_(self.adaln.net[1].bias)

    def forward(self, x, num_blocks, attn_mask=None, text=None, return_attention=False) -> BlockOutput:
        if text is None:
            return super().forward(x, num_blocks, attn_mask)
        BM, T, D = x.shape
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
        return self.pool(xn), None, None


# The class of a conditioned layer, by model.conditioning. Feature conditioning acts once on the
# predictor's input (FeatureConditioner), so its layers are plain blocks.
BLOCKS: dict[str, type[PredictorBlock]] = {
    "xattn": XAttnBlock,
    "caption_xattn": CaptionXAttnBlock,
    "adaln": AdaLNBlock,
    "feature": PredictorBlock,
}

__all__ = ["BLOCKS", "AdaLNBlock", "CaptionXAttnBlock", "PredictorBlock", "TextInput", "XAttnBlock"]
