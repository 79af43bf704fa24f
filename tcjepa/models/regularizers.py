"""Unsupervised patch-word grounding regularizers (TC-JEPA, SPEC section 2).

For conditioned layer l, predictor token i and word s of caption n:
    O_is^(l) = max(cos(q_i^(l), K_s^(l)), 0)        (padding words excluded)
    L_sparse  = mean_i (1/L) sum_l sum_s O_is^(l)
    L_consist = mean_i (1/L) sum_l sum_s |O_is^(l) - Obar_is|,   Obar = (1/L) sum_l O^(l)
both computed per caption and averaged over captions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def word_cosines(q: torch.Tensor, k: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """q (B, Q, D) token queries, k (B, N, S, D) word keys, word_mask (B, N, S) True = word.

    Returns O (B, N, Q, S) = relu(cos), zero on padding words.
    """
    cos = torch.einsum("bqd,bnsd->bnqs", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    return cos.clamp_min(0) * word_mask[:, :, None, :].to(cos.dtype)


@dataclass
class GroundingTerms:
    sparse: torch.Tensor  # scalar
    consist: torch.Tensor  # scalar
    positive_fraction: torch.Tensor  # (L,) fraction of real (token, word) pairs with cos > 0


def _token_mean(x: torch.Tensor, token_valid: Optional[torch.Tensor]) -> torch.Tensor:
    """x (B, N, Q) -> mean over valid tokens per caption, then over captions."""
    if token_valid is None:
        return x.mean()
    w = token_valid[:, None, :].to(x.dtype)
    per_caption = (x * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)
    return per_caption.mean()


def grounding_terms(
    cosines: list[torch.Tensor],
    word_mask: torch.Tensor,
    token_valid: Optional[torch.Tensor] = None,
) -> GroundingTerms:
    """cosines: per conditioned layer O^(l) (B, N, Q, S); token_valid (B, Q) or None."""
    O = torch.stack(cosines)  # (L, B, N, Q, S)
    sparse = _token_mean(O.sum(-1).mean(0), token_valid)
    O_bar = O.mean(0, keepdim=True)
    consist = _token_mean((O - O_bar).abs().sum(-1).mean(0), token_valid)
    with torch.no_grad():
        pairs = word_mask[:, :, None, :].expand(O.shape[1:])
        if token_valid is not None:
            pairs = pairs & token_valid[:, None, :, None]
        count = pairs.sum().clamp_min(1)
        positive = torch.stack([((o > 0) & pairs).sum() / count for o in cosines])
    return GroundingTerms(sparse=sparse, consist=consist, positive_fraction=positive)
