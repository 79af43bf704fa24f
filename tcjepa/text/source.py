"""Where a batch's word features come from: a feature cache or the frozen encoder, one interface.

- ``CachedText``: features precomputed by ``tcjepa-data text-cache``, looked up by caption id
  inside the loader's workers (the mask collator calls ``lookup``), so the step never waits.
- ``OnlineText``: the frozen text encoder runs in the main process on each batch's caption
  strings, on the training device.

The training step calls ``source.attach(batch, device)`` on every batch and does not know
which one it has; ``build_text_source(cfg, device)`` picks (None when text is off).
"""
from __future__ import annotations

import functools
from typing import Optional, Protocol

import torch

from ..config import Config
from ..data.batch import JEPABatch
from ..data.masks import TextLookup
from ..errors import TrainingError


class TextSource(Protocol):
    lookup: Optional[TextLookup]  # given to the mask collator, run in the loader's workers

    def check_dataset(self, dataset) -> None: ...

    def attach(self, batch: JEPABatch, device: torch.device) -> JEPABatch: ...


class CachedText:
    """Word features from a ``TextFeatureCache``, trimmed to the batch's longest caption."""

    def __init__(self, cache):
        self.cache = cache
        self.lookup: Optional[TextLookup] = functools.partial(cache.lookup, trim=True, round_to=8)

    def check_dataset(self, dataset) -> None:
        self.cache.check_captions(dataset.caption_texts())

    def attach(self, batch: JEPABatch, device: torch.device) -> JEPABatch:
        return batch  # the collator looked the features up already


class OnlineText:
    """A ``FrozenTextEncoder`` run on the batch's captions in the main process."""

    lookup: Optional[TextLookup] = None

    def __init__(self, encoder):
        self.encoder = encoder

    def check_dataset(self, dataset) -> None:
        pass  # every caption string is encoded as it comes

    def attach(self, batch: JEPABatch, device: torch.device) -> JEPABatch:
        if batch.text is not None:
            return batch
        captions = [c for per_image in batch.captions for c in per_image]
        feats, mask = self.encoder.encode(captions)
        B, N = len(batch.captions), len(batch.captions[0])
        return batch.with_text(feats.reshape(B, N, *feats.shape[1:]).to(device).float(),
                               mask.reshape(B, N, -1).to(device))


def build_text_source(cfg: Config, device: torch.device) -> Optional[TextSource]:
    """The cache named by ``data.text_cache`` (checked against ``text.*``), else the online
    encoder ``text.encoder``; None for I-JEPA (``text.enabled=false``)."""
    if not cfg.text.enabled:
        return None
    if cfg.data.text_cache:
        from .cache import TextFeatureCache

        cache = TextFeatureCache(cfg.data.text_cache)
        cache.check_encoder(cfg.text.encoder, cfg.text.max_words, cfg.text.dim)
        return CachedText(cache)
    from .encoder import FrozenTextEncoder

    encoder = FrozenTextEncoder(cfg.text.encoder, max_words=cfg.text.max_words, device=str(device))
    if encoder.dim != cfg.text.dim:
        raise TrainingError(f"text encoder {cfg.text.encoder!r} gives {encoder.dim}-d words but text.dim={cfg.text.dim}")
    return OnlineText(encoder)
