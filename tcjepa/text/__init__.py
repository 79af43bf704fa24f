"""Text side of TC-JEPA: the frozen caption encoder and its precomputed word-feature cache."""
from .cache import TextFeatureCache, caption_fingerprint
from .cache_build import build_text_cache
from .encoder import FrozenTextEncoder, resolve_text_encoder, sanitize_caption, sanitize_captions

__all__ = [
    "FrozenTextEncoder",
    "TextFeatureCache",
    "build_text_cache",
    "caption_fingerprint",
    "resolve_text_encoder",
    "sanitize_caption",
    "sanitize_captions",
]
