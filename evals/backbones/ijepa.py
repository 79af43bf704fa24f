"""Official I-JEPA weights: the ``.pth.tar`` training checkpoints and HF ``IJepaModel`` folders.

Both load into our ``JEPAViT`` (same timm layout as the official encoder), so I-JEPA,
TC-JEPA and converted checkpoints share one forward pass. The architecture is read from
the weights: width and patch size from the patch embedding, depth from the blocks, grid
from the position table, MLP ratio from the first MLP layer; heads come from ``arch``
or, failing that, from the width (the standard ViT table).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from tcjepa.models.vit import VIT_ARCHS

from .base import BackboneSpec, CheckpointError, UserError, register_backbone
from .jepa_vit import JEPAViTBackbone, StoredPositionsViT, final_norm_prefix
from .loading import load_strict, read_json, read_state_dict, read_folder_weights, resolve_weights, strip_prefix

CKPT_KEYS = ("target_encoder", "encoder")
# width -> heads for the ViTs I-JEPA released (and ours); giant is I-JEPA's ViT-g/16.
HEADS_BY_WIDTH = {dim: heads for dim, _, heads in VIT_ARCHS.values()} | {1408: 16}


def heads_for(width: int, arch: Optional[str], source: str) -> int:
    if arch:
        name = re.sub(r"_patch\d+.*$", "", arch)  # accept 'vit_huge' or 'vit_huge_patch14'
        if name not in VIT_ARCHS:
            raise UserError(f"unknown --arch {arch!r}; known: {sorted(VIT_ARCHS)}")
        dim, _, heads = VIT_ARCHS[name]
        if dim != width:
            raise CheckpointError(f"{source}: --arch {arch} has width {dim} but the weights have width {width}")
        return heads
    if width not in HEADS_BY_WIDTH:
        raise UserError(f"{source}: width {width} is not a standard ViT; pass --arch to name the architecture")
    return HEADS_BY_WIDTH[width]


def encoder_from_timm_state(state: dict[str, torch.Tensor], arch: Optional[str], source: str,
                            layer_norm_eps: float = 1e-6, num_heads: Optional[int] = None) -> StoredPositionsViT:
    """Build and strictly load a JEPAViT from a timm-layout state dict (I-JEPA's own layout).

    ``num_heads`` (from a config) wins over ``arch`` and the width table."""
    try:
        proj = state["patch_embed.proj.weight"]
        pos = state["pos_embed"]
        fc1 = state["blocks.0.mlp.fc1.weight"]
    except KeyError as e:
        raise CheckpointError(
            f"{source}: not a ViT encoder state dict (no {e.args[0]}); first keys: {sorted(state)[:8]}"
        ) from None
    width, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    side = round(pos.shape[1] ** 0.5)
    if side * side != pos.shape[1]:
        raise CheckpointError(f"{source}: position table of {pos.shape[1]} entries is not a square grid")
    encoder = StoredPositionsViT(
        img_size=side * patch, patch_size=patch, embed_dim=width, depth=depth,
        num_heads=num_heads or heads_for(width, arch, source), mlp_ratio=fc1.shape[0] / width,
    )
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = layer_norm_eps
    # The checkpoint's final norm is ``norm``; timm may keep it as ``fc_norm``.
    norm_prefix = final_norm_prefix(encoder)
    state = {(norm_prefix + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
    load_strict(encoder, state, source)
    encoder.detect_sincos_positions()
    return encoder


def load_pth_tar(path: Path, ckpt_key: str, arch: Optional[str]) -> StoredPositionsViT:
    checkpoint = read_state_dict(path)
    if ckpt_key not in checkpoint:
        tensors_at_top = any(isinstance(v, torch.Tensor) for v in checkpoint.values())
        found = "a bare state dict" if tensors_at_top else f"keys {sorted(checkpoint)}"
        raise CheckpointError(
            f"{path}: no {ckpt_key!r} entry (found {found}); I-JEPA checkpoints hold "
            f"'target_encoder' and 'encoder' (choose with --ckpt-key)"
        )
    state = strip_prefix(checkpoint[ckpt_key], "module.")
    return encoder_from_timm_state(state, arch, f"{path}[{ckpt_key}]")


def hf_ijepa_to_timm(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """HF ``IJepaModel`` on-disk keys (the hub format) -> timm/I-JEPA keys.

    Every input key must be consumed: leftovers are reported, not dropped.
    """
    state = strip_prefix(state, "ijepa.")
    remaining = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in remaining:
            raise CheckpointError(f"{source}: missing key {key!r} for an IJepaModel checkpoint")
        return remaining.pop(key)

    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.projection.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.projection.bias")
    out["pos_embed"] = take("embeddings.position_embeddings")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[tm + f"norm1.{part}"] = take(hf + f"layernorm_before.{part}")
            out[tm + f"attn.qkv.{part}"] = torch.cat(
                [take(hf + f"attention.attention.{name}.{part}") for name in ("query", "key", "value")]
            )
            out[tm + f"attn.proj.{part}"] = take(hf + f"attention.output.dense.{part}")
            out[tm + f"norm2.{part}"] = take(hf + f"layernorm_after.{part}")
            out[tm + f"mlp.fc1.{part}"] = take(hf + f"intermediate.dense.{part}")
            out[tm + f"mlp.fc2.{part}"] = take(hf + f"output.dense.{part}")
    out["norm.weight"] = take("layernorm.weight")
    out["norm.bias"] = take("layernorm.bias")
    if remaining:
        raise CheckpointError(f"{source}: unexpected keys for an IJepaModel: {sorted(remaining)}")
    return out


def load_hf_folder(folder: Path, arch: Optional[str]) -> StoredPositionsViT:
    config = read_json(folder / "config.json")
    if config.get("model_type") != "ijepa":
        raise CheckpointError(f"{folder}: config.json model_type is {config.get('model_type')!r}, expected 'ijepa'")
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise CheckpointError(f"{folder}: only gelu MLPs with qkv bias are supported (I-JEPA's ViT)")
    state = hf_ijepa_to_timm(read_folder_weights(folder), str(folder))
    if arch:
        raise UserError(f"{folder}: --arch applies to .pth.tar checkpoints; an HF folder's config.json names its size")
    return encoder_from_timm_state(
        state, None, str(folder), layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        num_heads=config.get("num_attention_heads", 12),
    )


@register_backbone("ijepa")
def build_ijepa(spec: BackboneSpec) -> JEPAViTBackbone:
    """Official I-JEPA: .pth.tar checkpoint (--ckpt-key target_encoder|encoder) or HF IJepaModel folder."""
    opts = spec.take_options(ckpt_key="target_encoder", arch=None, image_size=None)
    path = resolve_weights(spec.weights, spec.name)
    if path.is_dir():
        if spec.options.get("ckpt_key"):
            raise UserError(f"{path}: --ckpt-key applies to .pth.tar checkpoints, not HF folders")
        encoder = load_hf_folder(path, opts["arch"])
        source = {"weights": str(path), "format": "hf IJepaModel"}
    else:
        if opts["ckpt_key"] not in CKPT_KEYS:
            raise UserError(f"--ckpt-key must be one of {CKPT_KEYS}, got {opts['ckpt_key']!r}")
        encoder = load_pth_tar(path, opts["ckpt_key"], opts["arch"])
        source = {"weights": str(path), "format": "i-jepa .pth.tar", "ckpt_key": opts["ckpt_key"]}
    return JEPAViTBackbone(encoder, image_size=opts["image_size"], source=source)
