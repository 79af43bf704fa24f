"""timm ``VisionTransformer`` backbones from local weights (DINOv2, SigLIP, ...).

The model is built with ``dynamic_img_size=True``, so timm resamples the position table
to the exact grid of every input (prefix tokens kept out of the resampling, non-square
inputs fine). Weights: a timm hub-style folder (``config.json`` with ``architecture`` and
optional ``model_args``, plus ``model.safetensors`` / ``pytorch_model.bin``) or a single
file with the timm model name given as ``arch``. Sizes the name does not fix (width,
depth, MLP ratio, grid, registers) are read from the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import timm
import torch
from timm.models import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn

from .base import Backbone, CheckpointError, UserError
from .loading import load_strict, read_json, read_state_dict


def timm_arch_and_weights(path: Path, arch: Optional[str]) -> tuple[str, dict, dict, dict[str, torch.Tensor]]:
    """(model name with tag, model_args, pretrained_cfg, state dict) for a timm folder or file."""
    config: dict = {}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: folder without config.json; pass the weights file and --arch NAME")
        config = read_json(path / "config.json")
        if "architecture" not in config:
            raise UserError(f"{path}/config.json has no 'architecture': not a timm folder")
    name = arch or config.get("architecture")
    if not name:
        raise UserError(f"{path}: a single weights file needs --arch with the timm model name "
                        f"(e.g. vit_base_patch16_siglip_224.v2_webli)")
    if arch and config.get("architecture") and arch.split(".")[0] != config["architecture"].split(".")[0]:
        raise UserError(f"--arch {arch} contradicts {path}/config.json architecture {config['architecture']}")
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    if "." not in name and pretrained_cfg.get("tag"):
        name = f"{name}.{pretrained_cfg['tag']}"
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"--arch {name!r} is not a timm model name")
    state = read_state_dict(path)
    return name, dict(config.get("model_args") or {}), pretrained_cfg, state


def infer_vit_args(state: dict[str, torch.Tensor], model_args: dict) -> dict:
    """Sizes read from the weights; explicit model_args win."""
    inferred: dict = {}
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:
        inferred["embed_dim"] = proj.shape[0]
        inferred["patch_size"] = proj.shape[-1]
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        if blocks:
            inferred["depth"] = max(blocks) + 1
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        if fc1 is not None:
            inferred["mlp_ratio"] = fc1.shape[0] / proj.shape[0]
        reg = state.get("reg_token")
        inferred["reg_tokens"] = 0 if reg is None else reg.shape[1]
        pos = state.get("pos_embed")
        if pos is not None:
            prefix = ("cls_token" in state) + inferred["reg_tokens"]
            n = pos.shape[1]
            for candidate in (n, n - prefix):  # with or without entries for the prefix tokens
                side = round(candidate ** 0.5)
                if side * side == candidate:
                    inferred["img_size"] = side * inferred["patch_size"]
                    break
    return inferred | model_args


class TimmViTBackbone(Backbone):
    """Any timm VisionTransformer; the global vector is what its own head pools
    (class token for DINOv2, the MAP attention-pool for SigLIP)."""

    def __init__(self, model: VisionTransformer, image_size: int, mean, std, source: dict):
        super().__init__()
        if not isinstance(model, VisionTransformer):
            raise UserError(f"{source.get('weights')}: {type(model).__name__} is not a timm VisionTransformer")
        self.model = model
        self.patch_size = model.patch_embed.patch_size[0]
        self.embed_dim = model.embed_dim
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.has_class_token = model.cls_token is not None
        self.num_prefix_tokens = model.num_prefix_tokens
        self.global_vector_kind = {
            "token": "class token after the final norm",
            "map": "attention-pool (MAP) head output",
            "avg": "mean of patch tokens",
        }.get(model.global_pool, model.global_pool)
        self.default_features = {"token": "cls_patch_mean", "map": "map"}.get(model.global_pool, "patch_mean")
        self.source = source

    def forward_with_global(self, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.forward_features(x, n)[:2]

    def forward_features(self, x: torch.Tensor, n: int = 1):
        B = x.shape[0]
        h, w = self.patch_grid(x)
        # prefix tokens (class first, then registers) come split off the patch tokens
        final, intermediates = self.model.forward_intermediates(x, indices=n, norm=True, output_fmt="NLC",
                                                                return_prefix_tokens=self.has_class_token)
        class_tokens = None
        if self.has_class_token:
            intermediates, class_tokens = [t for t, _ in intermediates], [p[:, 0] for _, p in intermediates]
        patches = [t.reshape(B, h, w, t.shape[-1]) for t in intermediates]
        global_vector = self.model.forward_head(final, pre_logits=True)
        return patches, global_vector, class_tokens

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        return self.forward_with_global(x, n)[0]

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        info.update(
            num_prefix_tokens=self.num_prefix_tokens,
            register_tokens=self.model.num_reg_tokens,
            position_embedding="timm resample_abs_pos_embed to the exact grid (prefix tokens excluded)",
            **self.source,
        )
        return info


def build_timm_vit(path: Path, arch: Optional[str], image_size: Optional[int], default_image_size: Optional[int],
                   expect: str, **fixed_args) -> TimmViTBackbone:
    """Build ``arch`` (or the folder's architecture) and strictly load ``path`` into it.

    ``expect`` is a substring the model name must contain (e.g. 'dinov2', 'siglip'), so a
    SigLIP file passed as DINOv2 fails early with a clear message.
    """
    name, model_args, pretrained_cfg, state = timm_arch_and_weights(path, arch)
    if expect not in name:
        raise UserError(f"{path}: timm model {name!r} is not a {expect} model")
    args = infer_vit_args(state, model_args) | fixed_args
    args.update(num_classes=0, dynamic_img_size=True)
    try:
        model = timm.create_model(name, pretrained=False, **args)
    except (TypeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: cannot build timm {name} with {args}: {e}") from None
    # Official formats (original DINOv2 / big_vision keys) are converted the way timm does;
    # timm-format files pass through unchanged.
    state = checkpoint_filter_fn(state, model)
    load_strict(model, state, str(path), hint=f"timm model {name} with {args}")
    cfg = model.pretrained_cfg | pretrained_cfg
    native = int(cfg.get("input_size", (3, model.patch_embed.img_size[0]))[-1])
    source = {"weights": str(path), "format": "timm", "timm_model": name, "native_image_size": native}
    return TimmViTBackbone(model.eval(), image_size or default_image_size or native,
                           cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)), source)
