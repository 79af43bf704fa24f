"""The training objective, in one place: prediction loss, grounding regularizers, their sum.

    loss = L_pred + loss.sparse_weight * L_sparse + loss.consist_weight * L_consist

``prediction_loss``: the predictor's output against the layer-normed target features.
Unsupervised patch-word grounding regularizers (TC-JEPA, docs/SPEC.md section 2): for
conditioned layer l, predictor token i and word s of caption n:
    O_is^(l) = max(cos(q_i^(l), K_s^(l)), 0)        (padding words excluded)
    L_sparse  = mean_i (1/L) sum_l sum_s O_is^(l)
    L_consist = mean_i (1/L) sum_l sum_s |O_is^(l) - Obar_is|,   Obar = (1/L) sum_l O^(l)
both computed per caption and averaged over captions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..config import LossConfig
    from .predictor import PredictorOutput


def jepa_objective(out: "PredictorOutput", target: torch.Tensor, cfg: "LossConfig") -> dict[str, torch.Tensor]:
    """The loss (``loss``, with gradients) and its detached terms, from the predictor's output
    and the target features; the regularizers join when the predictor returned cosine maps."""
    loss_pred = prediction_loss(out.pred, target, cfg.pred_loss, out.target_valid)
    stats = {"loss_pred": loss_pred.detach(), "target_std": token_spread(target, out.target_valid).detach()}
    loss = loss_pred
    if out.cosines:
        terms = grounding_terms(out.cosines, out.word_mask, out.token_valid)
        loss = loss + cfg.sparse_weight * terms.sparse + cfg.consist_weight * terms.consist
        stats.update(
            loss_sparse=terms.sparse.detach(),
            loss_consist=terms.consist.detach(),
            positive_cosine_fraction=terms.positive_fraction,
        )
    stats["loss"] = loss
    return stats


def prediction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str,
                    valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """pred, target (..., E). smooth_l1 (I-JEPA code), l2 (paper: squared L2 per token,
    averaged over tokens) or mse (per element). ``valid`` (...) marks real tokens of padded
    target blocks: the mean is then over those alone, as in the unpadded batch."""
    pred, target = pred.float(), target.float()
    if kind not in ("smooth_l1", "l2", "mse"):
        raise ValueError(f"unknown pred_loss {kind!r}")
    if valid is None:
        if kind == "smooth_l1":
            return F.smooth_l1_loss(pred, target)
        if kind == "l2":
            return (pred - target).pow(2).sum(-1).mean()
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        per_element = F.smooth_l1_loss(pred, target, reduction="none")
    elif kind == "l2":
        per_element = (pred - target).pow(2).sum(-1, keepdim=True)
    else:
        per_element = (pred - target).pow(2)
    w = valid[..., None].to(per_element.dtype)
    return (per_element * w).sum() / (w.sum() * per_element.shape[-1]).clamp_min(1)


def token_spread(features: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-channel std across every (real) token of the batch, averaged over channels: the
    collapse check.

    Targets are layer-normed per token, so their std over channels is 1 by construction and
    says nothing; a collapsed encoder maps all tokens to one vector, which drives this to 0."""
    x = features.float().flatten(0, -2)
    if valid is None:
        return x.std(dim=0).mean()
    w = valid.reshape(-1, 1).to(x.dtype)  # weights, not indexing: the shape stays fixed (vmap)
    n = w.sum()
    mean = (x * w).sum(0) / n
    return (((x - mean) ** 2 * w).sum(0) / (n - 1).clamp_min(1)).sqrt().mean()


def word_cosines(q: torch.Tensor, k: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """q (B, Q, D) token queries, k (B, N, S, D) word keys, word_mask (B, N, S) True = word.

    Returns O (B, N, Q, S) = relu(cos), zero on padding words; ``TextCrossAttention`` returns
    these maps for its conditioned layer (with ``model.grounding_keys=centered``, against
    ``conditioning.centered_keys``).
    """
    cos = torch.einsum("bqd,bnsd->bnqs", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    # masked_fill then relu: autograd keeps only the result O (relu's output) per layer, not
    # the raw cosines as well (clamp_min would save its input, the mask product its operand).
    return cos.masked_fill(~word_mask[:, :, None, :], 0).relu()


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


class _GroundingSums(torch.autograd.Function):
    """Per (image, caption, token): (1/L) sum_l sum_s O^(l) and (1/L) sum_l sum_s |O^(l) - Obar|,
    as float32 (float64 for float64 maps) (B, N, Q), from the L maps O^(l) (B, N, Q, S) of any float dtype.

    Exact, but without stacking the maps: the forward holds one (B, N, Q, S) temporary at a
    time (plus Obar in float32) and saves nothing but the maps themselves, which autograd
    already keeps for the backward of the relu that made them; the backward recomputes Obar
    and the signs.
    d/dO^(j) consist = (1/L) (sign(O^(j) - Obar) - (1/L) sum_l sign(O^(l) - Obar)).

    Written in the ``setup_context`` form with a generated vmap rule, so ``torch.func``
    transforms (``grad``, ``vmap`` over stacked models) can run through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = len(maps)
        obar = _mean_map(maps)
        acc = obar.dtype
        sparse = maps[0].sum(-1, dtype=acc)
        for o in maps[1:]:
            sparse += o.sum(-1, dtype=acc)
        consist = torch.zeros_like(sparse)
        for o in maps:
            consist += (o.to(acc) - obar).abs_().sum(-1)
        return sparse / L, consist / L

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g_sparse: torch.Tensor, g_consist: torch.Tensor):
        maps = ctx.saved_tensors
        L = len(maps)
        obar = _mean_map(maps)
        mean_sign = torch.zeros_like(obar)
        for o in maps:
            mean_sign += torch.sign(o.to(obar.dtype) - obar)
        mean_sign /= L
        gs = (g_sparse / L).unsqueeze(-1)
        gc = (g_consist / L).unsqueeze(-1)
        return tuple((gs + gc * (torch.sign(o.to(obar.dtype) - obar) - mean_sign)).to(o.dtype) for o in maps)


def _mean_map(maps) -> torch.Tensor:
    """Mean of the maps, accumulated in float32 (float64 stays float64)."""
    acc = maps[0].to(torch.promote_types(maps[0].dtype, torch.float32), copy=True)
    for o in maps[1:]:
        acc += o
    return acc / len(maps)


def grounding_terms(
    cosines: list[torch.Tensor],
    word_mask: torch.Tensor,
    token_valid: Optional[torch.Tensor] = None,
) -> GroundingTerms:
    """cosines: per conditioned layer O^(l) (B, N, Q, S); token_valid (B, Q) or None.

    Reductions run in float32 whatever the maps' dtype (bf16 under autocast)."""
    sparse_i, consist_i = _GroundingSums.apply(*cosines)  # (B, N, Q) each
    sparse = _token_mean(sparse_i, token_valid)
    consist = _token_mean(consist_i, token_valid)
    with torch.no_grad():
        # O is exactly 0 on padding words, so O > 0 already excludes them.
        words = word_mask.sum(-1)  # (B, N)
        tokens = cosines[0].shape[2] if token_valid is None else token_valid.sum(-1, keepdim=True)  # (B, 1)
        count = (words * tokens).sum().clamp_min(1)
        valid = None if token_valid is None else token_valid[:, None, :, None]
        positive = torch.stack([((o > 0) if valid is None else ((o > 0) & valid)).sum() / count for o in cosines])
    return GroundingTerms(sparse=sparse, consist=consist, positive_fraction=positive)
