"""Word features of the whole caption vocabulary, held on the device and indexed by caption id.

The features are the project's text cache (``tcjepa.text.cache``) of ``caption_vocabulary()``,
built once by the frozen text encoder; a study loads all of it (a few MB at fp16) onto the
device, so a training step looks its captions up with one gather.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tcjepa.study.scene_family import caption_vocabulary
from tcjepa.text.cache import TextFeatureCache
from tcjepa.text.cache_build import build_text_cache


def build_text_bank(folder: str | Path, encoder: str = "minilm", max_words: int = 32, progress: bool = False) -> Path:
    """Encode the vocabulary into a text cache at ``folder`` (resumes; a finished one is kept)."""
    from tcjepa.text.encoder import FrozenTextEncoder

    folder = Path(folder)
    try:
        TextFeatureCache(folder).check_captions(caption_vocabulary())
        return folder
    except (OSError, ValueError, RuntimeError):
        pass  # missing, incomplete (the build resumes) or stale (rebuilt)
    return build_text_cache(caption_vocabulary(), folder, FrozenTextEncoder(encoder, max_words=max_words),
                            progress=progress)


class TextBank:
    """``lookup(ids)`` -> float features (..., S, d_t) and bool mask (..., S), on the bank's device."""

    def __init__(self, features: torch.Tensor, mask: torch.Tensor):
        if features.shape[:2] != mask.shape:
            raise ValueError(f"features {tuple(features.shape)} and mask {tuple(mask.shape)} do not match")
        self.features = features
        self.mask = mask

    @classmethod
    def from_cache(cls, folder: str | Path, device: torch.device | str = "cpu") -> "TextBank":
        cache = TextFeatureCache(folder)
        vocabulary = caption_vocabulary()
        cache.check_captions(vocabulary)
        features, mask = cache.lookup(torch.arange(len(vocabulary)), trim=True, round_to=8)
        return cls(features.to(device), mask.to(device))

    @property
    def dim(self) -> int:
        return self.features.shape[-1]

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[ids].float(), self.mask[ids]
