"""DINOv2: HF ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folders and timm
``vit_*_patch14_dinov2.lvd142m`` (and ``vit_*_patch14_reg4_dinov2``) weights.

Global vector = class token after the final norm (DINOv2's linear-probe feature);
register tokens are removed from the patch tokens and never enter a mean.
Evaluated at 224 unless told otherwise (DINOv2's linear protocol), whatever the 518
training grid: the position table is resampled to the exact grid.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .base import Backbone, BackboneSpec, CheckpointError, register_backbone
from .loading import hf_from_pretrained_strict, read_json, resolve_weights
from .timm_vit import build_timm_vit

EVAL_IMAGE_SIZE = 224
HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


class HFDinov2Backbone(Backbone):
    has_class_token = True
    global_vector_kind = "class token after the final norm"
    default_features = "cls_patch_mean"

    def __init__(self, model, image_size: int, mean, std, source: dict):
        super().__init__()
        self.model = model
        config = model.config
        self.patch_size = config.patch_size
        self.embed_dim = config.hidden_size
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_tokens = getattr(config, "num_register_tokens", 0)
        self.num_prefix_tokens = 1 + self.register_tokens
        self.source = source

    def forward_with_global(self, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.forward_features(x, n)[:2]

    def forward_features(self, x: torch.Tensor, n: int = 1):
        B = x.shape[0]
        h, w = self.patch_grid(x)
        out = self.model(pixel_values=x, output_hidden_states=True)
        # hidden_states[-1] is the last block before the final norm; layernorm of it is last_hidden_state
        normed = [self.model.layernorm(t) for t in out.hidden_states[-n:]]
        patches = [t[:, self.num_prefix_tokens:].reshape(B, h, w, -1) for t in normed]
        return patches, normed[-1][:, 0], [t[:, 0] for t in normed]

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        return self.forward_with_global(x, n)[0]

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        info.update(
            register_tokens=self.register_tokens,
            position_embedding="HF bicubic interpolation to the exact grid (class token excluded)",
            **self.source,
        )
        return info


def load_hf_dinov2(folder: Path, image_size) -> HFDinov2Backbone:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{folder}: config.json model_type is {model_type!r}, expected one of {HF_MODEL_TYPES}")
    model_cls = Dinov2Model if model_type == "dinov2" else Dinov2WithRegistersModel
    model = hf_from_pretrained_strict(model_cls, folder)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.exists():
        pre = read_json(preprocessor)
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    source = {"weights": str(folder), "format": f"hf {model_cls.__name__}", "native_image_size": config.get("image_size")}
    return HFDinov2Backbone(model, image_size or EVAL_IMAGE_SIZE, mean, std, source)


@register_backbone("dinov2")
def build_dinov2(spec: BackboneSpec) -> Backbone:
    """DINOv2 (+registers): HF Dinov2Model folder, or timm vit_*_dinov2 folder/file (--arch NAME for a file)."""
    opts = spec.take_options(arch=None, image_size=None)
    path = resolve_weights(spec.weights, spec.name)
    if path.is_dir() and "model_type" in read_json_if_exists(path / "config.json"):
        return load_hf_dinov2(path, opts["image_size"])
    return build_timm_vit(path, opts["arch"], opts["image_size"], EVAL_IMAGE_SIZE, expect="dinov2")


def read_json_if_exists(path: Path) -> dict:
    return read_json(path) if path.exists() else {}
