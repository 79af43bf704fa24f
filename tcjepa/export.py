"""Export a trained encoder for timm and transformers, and load encoders back.

``export_encoder`` turns one encoder of a training checkpoint (the EMA target encoder by
default, the one I-JEPA evaluates) into a folder:

    out_dir/model.safetensors   timm VisionTransformer keys
    out_dir/config.json         timm hub-style config (architecture, model_args, pretrained_cfg)
    out_dir/hf/                 transformers IJepaModel: config.json, model.safetensors,
                                preprocessor_config.json

Load it with ``timm.create_model('local-dir:out_dir', pretrained=True)`` or
``transformers.IJepaModel.from_pretrained('out_dir/hf')``. Nothing here unpickles: training
checkpoints load with ``weights_only=True``, exports are safetensors + JSON.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from tcjepa.errors import UserError
from tcjepa.models.vit import TIMM_NAMES, VIT_ARCHS, JEPAViT, build_encoder
from tcjepa.train.checkpoint import Checkpointer, atomic_write

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HF_SUBDIR = "hf"
# timm needs a registered architecture name; every size is set by model_args, so any ViT does.
_FALLBACK_TIMM_ARCH = "vit_base_patch16_224"
# Wrapper prefixes that DDP, torch.compile, FSDP1 and activation checkpointing put in names.
_WRAPPER_TOKENS = re.compile(r"(^|\.)(module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")
# JEPAViT's fixed timm arguments; an export folder must agree with them.
_FIXED_TIMM_ARGS = {"class_token": False, "global_pool": "avg", "num_classes": 0}


class ExportError(UserError):
    """A checkpoint or export folder that cannot be turned into an encoder; names the file."""


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` / FSDP1 / checkpoint-wrapper tokens from every key."""
    out = {}
    for k, v in state.items():
        prev = None
        while prev != k:
            prev, k = k, _WRAPPER_TOKENS.sub(r"\1", k)
        out[k] = v
    return out


def _config_value(config: dict, path: str, source: Path) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ExportError(f"{source}: checkpoint config has no '{path}' (needed to rebuild the encoder)")
        node = node[part]
    return node


def _encoder_from_checkpoint(ckpt: dict, key: str, source: Path) -> tuple[JEPAViT, dict]:
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise ExportError(f"{source}: no 'config' dict in the checkpoint; was it written by tcjepa-train?")
    name = _config_value(config, "model.encoder", source)
    patch_size = _config_value(config, "model.patch_size", source)
    image_size = _config_value(config, "data.image_size", source)
    if name not in VIT_ARCHS:
        raise ExportError(f"{source}: config model.encoder={name!r} is not one of {sorted(VIT_ARCHS)}")
    if key not in ckpt:
        have = sorted(k for k, v in ckpt.items() if isinstance(v, dict))
        raise ExportError(f"{source}: no '{key}' in the checkpoint; state dicts present: {have}")
    model = build_encoder(name, image_size, patch_size)
    _load_strict(model, strip_wrapper_prefixes(ckpt[key]), f"{source}[{key!r}]")
    data = config.get("data", {})
    info = {
        "encoder": name,
        "patch_size": patch_size,
        "image_size": image_size,
        "mean": list(data.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": list(data.get("std", IMAGENET_DEFAULT_STD)),
        "source": str(source),
        "key": key,
        "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"),
        "config": config,
    }
    return model, info


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{source}: state dict does not match the encoder in its config: {e}") from None


# ----------------------------------------------------------------------------- timm layout


def final_norm(model: JEPAViT) -> nn.Module:
    """The LayerNorm applied to the output tokens: ``norm``, or ``fc_norm`` when timm put it there."""
    return model.norm if not isinstance(model.norm, nn.Identity) else model.fc_norm


def timm_config(model: JEPAViT, info: dict) -> dict:
    name, patch = info["encoder"], model.patch_size
    img = model.model_args["img_size"]
    model_args = dict(model.model_args)
    model_args.update(_FIXED_TIMM_ARGS)
    model_args["fc_norm"] = not isinstance(model.fc_norm, nn.Identity)
    return {
        "architecture": TIMM_NAMES.get((name, patch), _FALLBACK_TIMM_ARCH),
        "num_classes": 0,
        "num_features": model.num_features,
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "tcjepa",
            "custom_load": False,
            "input_size": [3, img, img],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": info["mean"],
            "std": info["std"],
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "tcjepa": {k: info[k] for k in ("encoder", "source", "key", "step", "epoch") if k in info},
    }


# ----------------------------------------------------------------------------- transformers layout


def hf_ijepa_config(model: JEPAViT):
    from transformers import IJepaConfig

    a = model.model_args
    return IJepaConfig(
        hidden_size=a["embed_dim"],
        num_hidden_layers=a["depth"],
        num_attention_heads=a["num_heads"],
        intermediate_size=int(a["embed_dim"] * a["mlp_ratio"]),
        hidden_act="gelu",  # timm's nn.GELU is the exact erf form, as is transformers' "gelu"
        layer_norm_eps=final_norm(model).eps,
        image_size=a["img_size"],
        patch_size=a["patch_size"],
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        architectures=["IJepaModel"],
    )


def timm_to_hf_ijepa(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """timm ViT keys -> transformers IJepaModel keys, in the hub layout of facebook/ijepa_*
    (``encoder.layer.{i}.attention.attention.query`` ...), which transformers 4.x loads as is
    and 5.x converts on load. timm's fused qkv is split into query / key / value."""
    state = dict(state)
    out = {
        "embeddings.patch_embeddings.projection.weight": state.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": state.pop("patch_embed.proj.bias"),
        "embeddings.position_embeddings": state.pop("pos_embed"),
    }
    norm = "norm" if "norm.weight" in state else "fc_norm"
    out["layernorm.weight"] = state.pop(f"{norm}.weight")
    out["layernorm.bias"] = state.pop(f"{norm}.bias")
    renames = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = state.pop(f"{src}attn.qkv.{kind}", None)
            if qkv is not None:
                for part, t in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
                    out[f"{dst}attention.attention.{part}.{kind}"] = t
            for a, b in renames.items():
                out[f"{dst}{b}.{kind}"] = state.pop(f"{src}{a}.{kind}")
    if state:
        raise ExportError(f"no transformers IJepa equivalent for encoder weights {sorted(state)}")
    return out


def _hf_preprocessor_config(model: JEPAViT, info: dict) -> dict:
    img = model.model_args["img_size"]
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": img, "width": img},
        "resample": 3,  # PIL bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": info["mean"],
        "image_std": info["std"],
    }


# ----------------------------------------------------------------------------- writing


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _write_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    # Export-side copies: contiguous, detached, no shared storage (safetensors refuses aliasing).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def export_encoder(
    ckpt_path: str | Path, out_dir: str | Path, key: str = "target_encoder", allow_pickle: bool = False
) -> Path:
    """Write ``ckpt[key]`` as a timm + transformers export folder; returns ``out_dir``."""
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    ckpt = Checkpointer.read(ckpt_path, allow_pickle=allow_pickle)
    model, info = _encoder_from_checkpoint(ckpt, key, ckpt_path)
    state = model.state_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out_dir / WEIGHTS_NAME, state)
    _write_json(out_dir / CONFIG_NAME, timm_config(model, info))

    hf_dir = out_dir / HF_SUBDIR
    hf_dir.mkdir(exist_ok=True)
    hf_cfg = hf_ijepa_config(model)
    _write_json(hf_dir / CONFIG_NAME, hf_cfg.to_dict())
    _write_safetensors(hf_dir / WEIGHTS_NAME, timm_to_hf_ijepa(state, hf_cfg.num_hidden_layers))
    _write_json(hf_dir / "preprocessor_config.json", _hf_preprocessor_config(model, info))
    log.info("exported %s[%r] (step %s) to %s", ckpt_path, key, info["step"], out_dir)
    return out_dir


# ----------------------------------------------------------------------------- loading


def _encoder_from_export(folder: Path) -> tuple[JEPAViT, dict]:
    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise ExportError(f"{folder}: not an export folder, {p.name} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
        args = dict(cfg["model_args"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"{cfg_path}: not a timm-style config with model_args ({e})") from None
    for k, v in _FIXED_TIMM_ARGS.items():
        if args.pop(k, v) != v:
            raise ExportError(f"{cfg_path}: model_args.{k}={args.get(k)!r}, a JEPA encoder needs {v!r}")
    args.pop("fc_norm", None)  # JEPAViT decides where its final norm sits
    try:
        model = JEPAViT(**args)
    except TypeError as e:
        raise ExportError(f"{cfg_path}: model_args do not fit JEPAViT: {e}") from None
    _load_strict(model, load_file(str(weights)), str(weights))
    pcfg = cfg.get("pretrained_cfg", {})
    extra = cfg.get("tcjepa", {})
    info = {
        "encoder": extra.get("encoder"),
        "patch_size": model.patch_size,
        "image_size": args["img_size"],
        "mean": pcfg.get("mean", list(IMAGENET_DEFAULT_MEAN)),
        "std": pcfg.get("std", list(IMAGENET_DEFAULT_STD)),
        "source": str(folder),
        "key": extra.get("key"),
        "step": extra.get("step"),
        "epoch": extra.get("epoch"),
    }
    return model, info


def load_encoder(
    path: str | Path, key: str = "target_encoder", allow_pickle: bool = False
) -> tuple[JEPAViT, dict]:
    """A JEPAViT (eval mode) from a training checkpoint file, an export folder, or the
    ``model.safetensors`` inside one; plus an info dict (encoder, patch_size, image_size,
    mean, std, source, key, step, epoch; ``config`` for training checkpoints)."""
    path = Path(path)
    if path.is_dir():
        model, info = _encoder_from_export(path)
    elif path.suffix == ".safetensors":
        model, info = _encoder_from_export(path.parent)
    elif path.is_file():
        model, info = _encoder_from_checkpoint(Checkpointer.read(path, allow_pickle), key, path)
    else:
        raise ExportError(f"{path}: no such checkpoint file or export folder")
    return model.eval(), info
