"""The one interface every evaluated backbone implements, and the registry of backbones.

A backbone knows its own preprocessing and returns patch tokens on a grid plus a global
vector. Protocols (linear probe, segmentation, detection) only ever see this interface,
so a new backbone is one file that calls :func:`register_backbone`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

# The project's one family of user errors (one line, exit code 2), shared with tcjepa.
from tcjepa.errors import CheckpointError, UserError
from tcjepa.models.vit import patch_grid


@dataclass
class BackboneSpec:
    """What the user asked for: a registered name plus where its weights come from."""

    name: str  # registry key, e.g. 'tcjepa', 'ijepa', 'dinov2', 'siglip2'
    weights: Optional[str] = None  # local file/folder or hub id (loaded from the local cache only)
    options: dict = field(default_factory=dict)  # plugin-specific (e.g. ckpt_key, arch)

    def take_options(self, **defaults: Any) -> dict:
        """This plugin's options with defaults; an option the plugin does not know is an error,
        so a misspelt or misplaced flag never goes silently unused."""
        unknown = sorted(k for k, v in self.options.items() if v is not None and k not in defaults)
        if unknown:
            raise UserError(
                f"backbone {self.name!r} does not take option(s) {unknown}; it takes {sorted(defaults)}"
            )
        return {k: (self.options[k] if self.options.get(k) is not None else v) for k, v in defaults.items()}


class Backbone(nn.Module):
    """Frozen feature extractor.

    Subclasses set ``patch_size``, ``embed_dim``, ``mean``, ``std``, ``image_size`` and
    implement :meth:`forward_intermediates`; everything else derives from it.
    """

    patch_size: int
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    has_class_token: bool = False
    global_vector_kind: str = "mean of patch tokens"  # recorded with every result
    # The feature protocol (evals.feature_protocols) the backbone's authors probe it with.
    default_features: str = "patch_mean"

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Patch tokens (B, h, w, C) of the last ``n`` blocks, oldest first.

        The last entry is after the final norm (what ``forward_patches`` returns); earlier
        entries are the raw block outputs passed through the same final norm.
        Special tokens (class, registers, padding) are already removed.
        """
        raise NotImplementedError

    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(h, w) patches of the image batch ``x``; an error if its size is no multiple of the patch."""
        return patch_grid(x, self.patch_size)

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x, 1)[-1]

    def global_vector(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C): class token, pooling head or patch mean, as the backbone's authors use it."""
        return self.forward_with_global(x, 1)[1]

    def forward_with_global(self, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``forward_intermediates(x, n)`` and ``global_vector(x)`` from one forward pass.

        The default (patch mean) suits backbones without a class token or pooling head;
        backbones with one override this.
        """
        patches = self.forward_intermediates(x, n)
        return patches, patches[-1].mean(dim=(1, 2))

    def forward_features(self, x: torch.Tensor, n: int = 1
                         ) -> tuple[list[torch.Tensor], torch.Tensor, Optional[list[torch.Tensor]]]:
        """``forward_with_global(x, n)`` plus the class token (B, C) of each of the same ``n``
        blocks (after the final norm), or None for backbones without one."""
        patches, global_vector = self.forward_with_global(x, n)
        return patches, global_vector, None

    def protocol_info(self) -> dict:
        """Settings that every result records next to its numbers."""
        return {
            "backbone": type(self).__name__,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "has_class_token": self.has_class_token,
            "global_vector": self.global_vector_kind,
            "default_features": self.default_features,
        }

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen backbones stay in eval mode even inside a runner that calls .train().
        return super().train(False)


BackboneFactory = Callable[[BackboneSpec], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator for a factory ``spec -> Backbone``; its docstring's first line is the
    one-line description ``tcjepa-eval backbones`` prints."""

    def deco(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def describe_backbones() -> dict[str, str]:
    return {name: ((_REGISTRY[name].__doc__ or "").strip().splitlines() or [""])[0] for name in available_backbones()}


def build_backbone(spec: BackboneSpec) -> Backbone:
    if spec.name not in _REGISTRY:
        raise UserError(f"unknown backbone {spec.name!r}; available: {available_backbones()}")
    backbone = _REGISTRY[spec.name](spec)
    size, patch = spec.options.get("image_size"), backbone.patch_size
    if size is not None and size % patch:
        raise UserError(f"--image-size {size} is not divisible by the patch size {patch} of this {spec.name} "
                        f"backbone; use e.g. {size // patch * patch} or {(size // patch + 1) * patch}")
    return backbone.freeze()
