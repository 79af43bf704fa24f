"""How caption word features enter the predictor.

Shapes: predictor tokens of one image are laid out as (B, Q, D) with Q = M * T (all target
blocks of an image share its captions, and cross-attention does not mix tokens, so the M
blocks can be queried together without copying the text). Text is (B, N, S, d_t) with a
word mask (B, N, S), True = real word.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..kernels.text_xattn import text_cross_attention
from .losses import word_cosines


def mean_caption_vector(text: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """(B, N, S, d) -> (B, N, d): average of the real words of each caption."""
    w = word_mask.unsqueeze(-1).to(text.dtype)
    return (text * w).sum(2) / w.sum(2).clamp_min(1)


def centered_keys(k: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """(B, N, S, D) keys minus the mean key of their caption's real words.

    The softmax over words is blind to that shift, so cosines against these keys measure what
    the attention sees, and they cannot all be negative (centred keys sum to zero, so a query
    with any component in their span is positive on some word). The regularizers can still
    reach zero with queries orthogonal to that span, which also makes the attention uniform;
    on the embedded scenes they approach it without reaching it."""
    return k - mean_caption_vector(k, word_mask).unsqueeze(2)


class TextCrossAttention(nn.Module):
    """Single-head cross-attention from predictor tokens to the words of each caption.

    Every caption is attended independently: the N captions act as N "heads" sharing
    W_Q, W_K, W_V, W_O. The logits of all captions come from one (N*S x D) @ (D x Q) product,
    laid out words-major, (B, N, S, Q): the softmax runs over S, and the attention output
    P^T V reads that layout as a transposed operand, so no map is copied into another layout
    (docs/PERFORMANCE.md has the GPU profile). The patch-word cosines of the regularizers
    are ``word_cosines``, a second product of the unit-normalised q and k: it adds
    1.6 % to a ViT-L/16 N=8 step's FLOPs and replaces broadcast divisions by the norms, whose
    float32 temporaries and backward (a reduction over the whole map) are memory-bound work
    (on CPU the layer got 8 % faster; on a GPU, ViT-L/16 N=8 peak memory fell from 34.6 to
    31.4 GiB, and the speed change is mixed with a change of card: docs/PERFORMANCE.md).
    W_O is applied to the values, not to the attention output: attention rows sum to 1, so
    P (V W_O^T + b) = (P V) W_O^T + b exactly, and the projection runs on N*S word rows
    instead of N*Q token rows (S is tens of words, Q hundreds of predictor tokens). With S that
    small, explicit matmuls beat the fused attention kernel on CPU (measured;
    docs/PERFORMANCE.md), whose backward is tuned for long key sequences.
    """

    text_attention_impl = "auto"  # of max_over_captions: auto | fused | eager (kernels.set_text_attention_impl)

    def __init__(self, dim: int, text_dim: int, scale: bool = True, grounding_keys: str = "raw"):
        super().__init__()
        if grounding_keys not in ("raw", "centered"):
            raise ValueError(f"grounding_keys must be raw or centered, got {grounding_keys!r}")
        self.center_keys = grounding_keys == "centered"
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(text_dim, dim)
        self.v = nn.Linear(text_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim) if scale else 1.0

    def forward(
        self, h: torch.Tensor, text: torch.Tensor, word_mask: torch.Tensor,
        return_attention: bool = False, return_cosines: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """h (B, Q, D) normed tokens, text (B, N, S, d_t), word_mask (B, N, S) ->
        per-caption outputs (B, N, Q, D); if asked, attention probabilities and patch-word
        cosines O = relu(cos(q, k)) (zero on padding words), both (B, N, Q, S)."""
        B, Q, D = h.shape
        N, S = text.shape[1], text.shape[2]
        q = self.q(h)
        k = self.k(text).reshape(B, N * S, D)
        v = self.proj(self.v(text))  # (B, N, S, D)
        dots = torch.bmm(k, q.transpose(1, 2)).view(B, N, S, Q)
        pad = ~word_mask[..., None]  # (B, N, S, 1)
        probs = (dots * self.scale).masked_fill(pad, float("-inf")).softmax(2)  # over the words
        out = probs.transpose(2, 3) @ v  # (B, N, Q, S) @ (B, N, S, D): a transposed operand, no copy
        cosines = None
        if return_cosines:
            keys = k.view(B, N, S, D)
            cosines = word_cosines(q, centered_keys(keys, word_mask) if self.center_keys else keys, word_mask)
        return out, probs.transpose(2, 3) if return_attention else None, cosines

    def max_over_captions(self, h: torch.Tensor, text: torch.Tensor, word_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward()'s outputs max-pooled over captions (B, Q, D), and its cosines; with the
        fused kernel the per-caption outputs are never materialised (tcjepa.kernels.text_xattn)."""
        k = self.k(text)
        return text_cross_attention(
            self.q(h), k, self.proj(self.v(text)), word_mask, self.scale,
            cosine_keys=centered_keys(k, word_mask) if self.center_keys else None, impl=self.text_attention_impl)


class CaptionPool(nn.Module):
    """Fuse N per-caption results (B, N, ...) -> (B, ...): max (paper), mean, or attention
    (a learned query scores each caption's result per token)."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in ("max", "mean", "attention"):
            raise ValueError(f"caption_pool must be max, mean or attention, got {kind!r}")
        self.kind = kind
        self.query = nn.Parameter(torch.zeros(dim)) if kind == "attention" else None

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            # max, not amax: its backward scatters into one caption per element, where amax's
            # compares, counts and divides over the whole (B, N, ..., D) input (ties, which
            # only repeated captions make, get the same parameter gradient either way).
            return r.max(dim=1).values
        if self.kind == "mean":
            return r.mean(dim=1)
        weights = (r @ self.query / math.sqrt(r.shape[-1])).softmax(dim=1)
        return (weights.unsqueeze(-1) * r).sum(dim=1)


class AdaLNModulation(nn.Module):
    """DiT-style adaptive LayerNorm from the mean caption vector: shift, scale and gate for
    the self-attention and MLP branches. Zero-initialised, so training starts at I-JEPA."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(text_dim, 6 * dim))
        nn.init.zeros_(self.net[1].weight)
        nn.init.zeros_(self.net[1].bias)

    def forward(self, caption_vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, N, d_t) -> six (B, N, 1, D) tensors."""
        return self.net(caption_vec).unsqueeze(2).chunk(6, dim=-1)


class FeatureConditioner(nn.Module):
    """Predictor-input conditioning z <- z + MLP(LN([z, tbar])), one result per caption."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim + text_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim + text_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, z: torch.Tensor, caption_vec: torch.Tensor) -> torch.Tensor:
        """z (B, Q, D), caption_vec (B, N, d_t) -> (B, N, Q, D)."""
        B, Q, D = z.shape
        N = caption_vec.shape[1]
        zz = z.unsqueeze(1).expand(B, N, Q, D)
        tt = caption_vec.unsqueeze(2).expand(B, N, Q, caption_vec.shape[-1])
        return zz + self.mlp(self.norm(torch.cat([zz, tt], dim=-1)))
