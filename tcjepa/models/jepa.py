"""Context encoder + EMA target encoder + predictor + loss. I-JEPA when text is off.

``JEPA.forward`` returns a dict of loss terms and statistics; it never logs.
"""
from __future__ import annotations

import copy
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data.batch import JEPABatch
from ..train.optim import ema_update
from .predictor import Predictor, PredictorOutput
from .regularizers import grounding_terms
from .vit import build_encoder, gather_tokens


def prediction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """pred, target (..., E). smooth_l1 (I-JEPA code), l2 (paper: squared L2 per token,
    averaged over tokens) or mse (per element)."""
    pred, target = pred.float(), target.float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "l2":
        return (pred - target).pow(2).sum(-1).mean()
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown pred_loss {kind!r}")


def token_spread(features: torch.Tensor) -> torch.Tensor:
    """Per-channel std across every token of the batch, averaged over channels: the collapse check.

    Targets are layer-normed per token, so their std over channels is 1 by construction and
    says nothing; a collapsed encoder maps all tokens to one vector, which drives this to 0."""
    return features.float().flatten(0, -2).std(dim=0).mean()


class JEPA(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.encoder = build_encoder(m.encoder, cfg.data.image_size, m.patch_size, m.drop_path)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        grid = self.encoder.patch_embed.grid_size
        self.predictor = Predictor(
            embed_dim=self.encoder.embed_dim,
            grid_size=grid,
            dim=m.predictor_width,
            depth=m.predictor_depth,
            num_heads=m.predictor_heads or self.encoder.blocks[0].attn.num_heads,
            text_dim=cfg.text.dim if cfg.text.enabled else None,
            conditioning=m.conditioning,
            conditioned_layers=m.conditioned_layers,
            caption_pool=m.caption_pool,
            caption_pool_point=m.caption_pool_point,
            xattn_scale=m.xattn_scale,
            grounding_keys=m.grounding_keys,
        )
        self.text_enabled = cfg.text.enabled

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.encoder.patch_embed.grid_size)

    @torch.no_grad()
    def targets(self, images: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Layer-normed target-encoder features at the target blocks: (B, M, Kt, E)."""
        h = self.target_encoder.forward_features(images)
        h = F.layer_norm(h, (h.shape[-1],))
        B, M, Kt = target_idx.shape
        return gather_tokens(h, target_idx.reshape(B, M * Kt)).reshape(B, M, Kt, -1)

    def predict(self, batch: JEPABatch, return_attention: bool = False) -> PredictorOutput:
        """Context encoder on the batch's context patches, then the predictor (with the
        batch's words when the model has text)."""
        z = self.encoder.forward_features(batch.images, batch.context_idx, batch.context_valid)
        return self.predictor(z, batch.context_idx, batch.target_idx, batch.context_valid, batch.text,
                              batch.word_mask, return_attention)

    def forward(self, batch: JEPABatch) -> dict[str, torch.Tensor]:
        if not self.text_enabled:
            batch = batch.with_text(None, None)  # I-JEPA: captions in the batch are simply unused
        target = self.targets(batch.images, batch.target_idx)
        out = self.predict(batch)
        loss_pred = prediction_loss(out.pred, target, self.cfg.loss.pred_loss)
        stats = {"loss_pred": loss_pred.detach(), "target_std": token_spread(target).detach()}
        loss = loss_pred
        if out.cosines:
            terms = grounding_terms(out.cosines, out.word_mask, out.token_valid)
            loss = loss + self.cfg.loss.sparse_weight * terms.sparse + self.cfg.loss.consist_weight * terms.consist
            stats.update(
                loss_sparse=terms.sparse.detach(),
                loss_consist=terms.consist.detach(),
                positive_cosine_fraction=terms.positive_fraction,
            )
        stats["loss"] = loss
        return stats

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA of the trained encoder weights; fixed ones (sin-cos positions) stay as they are."""
        pairs = [(t, o.detach()) for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters())
                 if o.requires_grad]
        ema_update([t for t, _ in pairs], [o for _, o in pairs], momentum)
