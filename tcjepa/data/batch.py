"""The pretraining batch: one typed record from the mask collator to the predictor.

Field names are the same everywhere they travel (collator, loader, text source, step, model,
monitors): ``word_mask`` is the caption words' validity mask from the text cache or encoder to
the cross-attention and the regularizers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class JEPABatch:
    images: torch.Tensor  # (B, 3, H, W) float, normalised
    context_idx: torch.Tensor  # (B, Kc) int64 row-major patch indices
    target_idx: torch.Tensor  # (B, M, Kt) int64
    context_valid: Optional[torch.Tensor] = None  # (B, Kc) bool when contexts are padded, else None
    caption_ids: Optional[torch.Tensor] = None  # (B, N) int64 global caption indices
    captions: Optional[list[list[str]]] = None  # B lists of N caption strings
    sample_idx: Optional[torch.Tensor] = None  # (B,) int64 dataset indices
    text: Optional[torch.Tensor] = None  # (B, N, S, d_t) word features
    word_mask: Optional[torch.Tensor] = None  # (B, N, S) bool, True for real words
    # (B, M, Kt) bool when target blocks are padded to a fixed size (static-shape study batches)
    target_valid: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def _map(self, fn) -> "JEPABatch":
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                           if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "JEPABatch":
        """Every tensor on ``device``; word features as float32 (caches store float16)."""
        out = self._map(lambda t: t.to(device, non_blocking=non_blocking))
        if out.text is not None:
            out.text = out.text.float()
        return out

    def pin_memory(self) -> "JEPABatch":
        """Called by the DataLoader (``pin_memory=True``) on each batch."""
        return self._map(lambda t: t.pin_memory())

    def with_text(self, text: Optional[torch.Tensor], word_mask: Optional[torch.Tensor]) -> "JEPABatch":
        return dataclasses.replace(self, text=text, word_mask=word_mask)
