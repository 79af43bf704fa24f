"""SigLIP / SigLIP2 vision towers: HF ``SiglipVisionModel`` (fixed resolution, also the
format of SigLIP2's fixed-resolution checkpoints), HF ``Siglip2VisionModel`` (NaFlex),
full ``SiglipModel`` / ``Siglip2Model`` folders (the text tower is left out on purpose),
and timm ``vit_*_siglip_*.v2_webli`` weights.

No class token: the global vector is the attention-pooling (MAP) head output. NaFlex
inputs are sequences padded to a fixed length; padding tokens are dropped before the
patches are put back on their (h, w) grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .base import Backbone, BackboneSpec, CheckpointError, register_backbone
from .loading import hf_from_pretrained_strict, read_json, resolve_weights
from .timm_vit import build_timm_vit

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
FIXED_RES_TYPES = ("siglip_vision_model", "siglip")
NAFLEX_TYPES = ("siglip2_vision_model", "siglip2")
TEXT_TOWER = ("text_model.", "logit_scale", "logit_bias")


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C), row-major patches with (p, p, C) inside: the
    layout of the Siglip2 image processor."""
    B, C, H, W = x.shape
    h, w = H // patch_size, W // patch_size
    x = x.reshape(B, C, h, patch_size, w, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, h * w, patch_size * patch_size * C)


def tokens_to_grids(tokens: torch.Tensor, valid: torch.Tensor, spatial_shapes: torch.Tensor) -> list[torch.Tensor]:
    """(B, L, C) padded sequences -> one (h_i, w_i, C) grid per image, padding dropped."""
    grids = []
    for t, keep, (h, w) in zip(tokens, valid.bool(), spatial_shapes.tolist()):
        real = t[keep]
        if real.shape[0] != h * w:
            raise ValueError(f"{real.shape[0]} unpadded tokens do not fill the {h}x{w} grid of spatial_shapes")
        grids.append(real.reshape(h, w, -1))
    return grids


class HFSiglipBackbone(Backbone):
    """Fixed-resolution SigLIP vision tower (conv patch embedding, learned square table)."""

    global_vector_kind = "attention-pool (MAP) head output"
    default_features = "map"

    def __init__(self, model, image_size: int, mean, std, source: dict):
        super().__init__()
        self.model = model
        config = model.config
        if not getattr(config, "vision_use_head", True):
            raise CheckpointError(f"{source['weights']}: vision_use_head=False, there is no MAP head for a global vector")
        self.patch_size = config.patch_size
        self.embed_dim = config.hidden_size
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source

    def encode(self, x: torch.Tensor):
        return self.model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)

    def forward_with_global(self, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
        B = x.shape[0]
        h, w = self.patch_grid(x)
        out = self.encode(x)
        normed = [self.model.post_layernorm(t) for t in out.hidden_states[-n:]]
        return [t.reshape(B, h, w, -1) for t in normed], out.pooler_output

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        return self.forward_with_global(x, n)[0]

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        info.update(position_embedding="HF bicubic interpolation to the exact grid (no class token)", **self.source)
        return info


class HFSiglip2NaFlexBackbone(HFSiglipBackbone):
    """NaFlex SigLIP2: patchified input sequences with a padding mask and per-image grids."""

    def __init__(self, model, image_size: int, mean, std, source: dict, max_num_patches: Optional[int] = None):
        super().__init__(model, image_size, mean, std, source)
        self.max_num_patches = max_num_patches

    def forward_naflex(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor, spatial_shapes: torch.Tensor, n: int = 1
    ) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """Processor-style inputs -> (per layer, per image (h_i, w_i, C) grids), pooled (B, C)."""
        out = self.model(
            pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
            spatial_shapes=spatial_shapes, output_hidden_states=True,
        )
        normed = [self.model.post_layernorm(t) for t in out.hidden_states[-n:]]
        return [tokens_to_grids(t, pixel_attention_mask, spatial_shapes) for t in normed], out.pooler_output

    def forward_with_global(self, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
        B = x.shape[0]
        h, w = self.patch_grid(x)
        tokens = patchify(x, self.patch_size)
        length = tokens.shape[1]
        if self.max_num_patches and self.max_num_patches > length:
            # Pad as the processor does; exercised so results match processor inputs exactly.
            tokens = torch.nn.functional.pad(tokens, (0, 0, 0, self.max_num_patches - length))
        mask = torch.zeros(B, tokens.shape[1], dtype=torch.long, device=x.device)
        mask[:, :length] = 1
        shapes = torch.tensor([[h, w]] * B, device=x.device)
        layers, pooled = self.forward_naflex(tokens, mask, shapes, n)
        return [torch.stack(grids) for grids in layers], pooled

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        info.update(
            position_embedding="HF NaFlex bilinear (antialiased) resize to the exact grid; padding tokens dropped",
            max_num_patches=self.max_num_patches,
        )
        return info


def load_hf_siglip(folder: Path, image_size: Optional[int], max_num_patches: Optional[int]) -> HFSiglipBackbone:
    from transformers import Siglip2VisionModel, SiglipVisionModel

    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in FIXED_RES_TYPES + NAFLEX_TYPES:
        raise CheckpointError(
            f"{folder}: config.json model_type is {model_type!r}, expected one of {FIXED_RES_TYPES + NAFLEX_TYPES}"
        )
    naflex = model_type in NAFLEX_TYPES
    model_cls = Siglip2VisionModel if naflex else SiglipVisionModel
    full_model = model_type in ("siglip", "siglip2")
    model = hf_from_pretrained_strict(model_cls, folder, ignore_prefixes=TEXT_TOWER if full_model else ())
    vision = model.config
    mean, std = SIGLIP_MEAN, SIGLIP_STD
    if (folder / "preprocessor_config.json").exists():
        pre = read_json(folder / "preprocessor_config.json")
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    source = {"weights": str(folder), "format": f"hf {model_cls.__name__}" + (" (from full model)" if full_model else "")}
    if naflex:
        native = int(round(vision.num_patches ** 0.5)) * vision.patch_size
        source["native_image_size"] = native
        return HFSiglip2NaFlexBackbone(model, image_size or native, mean, std, source, max_num_patches)
    source["native_image_size"] = vision.image_size
    return HFSiglipBackbone(model, image_size or vision.image_size, mean, std, source)


@register_backbone("siglip2")
def build_siglip2(spec: BackboneSpec) -> Backbone:
    """SigLIP/SigLIP2 vision tower: HF Siglip(2)VisionModel or full-model folder, or timm vit_*_siglip_* (--arch for a file)."""
    opts = spec.take_options(arch=None, image_size=None, max_num_patches=None)
    path = resolve_weights(spec.weights, spec.name)
    config_file = path / "config.json" if path.is_dir() else None
    if config_file is not None and config_file.exists() and "model_type" in read_json(config_file):
        return load_hf_siglip(path, opts["image_size"], opts["max_num_patches"])
    if opts["max_num_patches"]:
        raise CheckpointError(f"{path}: max_num_patches applies to HF NaFlex (Siglip2VisionModel) folders only")
    return build_timm_vit(path, opts["arch"], opts["image_size"], None, expect="siglip")
