"""Context encoder + EMA target encoder + predictor + loss. I-JEPA when text is off.

``JEPA.forward(batch)`` returns a dict of loss terms and statistics (``losses.py``); it never
logs. ``JEPA.update_target`` is the EMA step of the target encoder, kept with the model it
updates.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data.batch import JEPABatch
from ..kernels.text_xattn import set_text_attention_impl
from .losses import jepa_objective
from .predictor import Predictor, PredictorOutput
from .vit import build_encoder, gather_tokens


@torch.no_grad()
def ema_update(
    target_params: Iterable[torch.Tensor], online_params: Iterable[torch.Tensor], momentum: float
) -> None:
    """target = momentum * target + (1 - momentum) * online, as two multi-tensor kernels."""
    target = list(target_params)
    online = list(online_params)
    if len(target) != len(online):
        raise ValueError(
            f"ema_update: {len(target)} target tensors vs {len(online)} online tensors; pass the "
            "parameters of the same architecture in the same order"
        )
    if not target:
        return
    online = [o.detach() for o in online]
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, online, alpha=1.0 - momentum)


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
        set_text_attention_impl(self.predictor, m.text_attention_impl)
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
                              batch.word_mask, return_attention, batch.target_valid)

    def forward(self, batch: JEPABatch) -> dict[str, torch.Tensor]:
        if not self.text_enabled:
            batch = batch.with_text(None, None)  # I-JEPA: captions in the batch are simply unused
        target = self.targets(batch.images, batch.target_idx)
        return jepa_objective(self.predict(batch), target, self.cfg.loss)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA of the trained encoder weights; fixed ones (sin-cos positions) stay as they are."""
        pairs = [(t, o.detach()) for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters())
                 if o.requires_grad]
        ema_update([t for t, _ in pairs], [o for _, o in pairs], momentum)
