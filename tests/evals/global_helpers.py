"""Tiny random-weight backbones saved in their official formats, and tiny ImageNet trees.

Shared by the eval-core tests (imported by name; pytest puts this folder on sys.path).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def save_ijepa_pth_tar(path: Path, width: int = 64, depth: int = 2, patch: int = 8, img: int = 32) -> dict:
    """An official-layout I-JEPA checkpoint: encoder/predictor/target_encoder with DDP prefixes."""
    from tcjepa.models.vit import JEPAViT

    torch.manual_seed(0)
    encoder = JEPAViT(img, patch, width, depth, num_heads=2)
    target = JEPAViT(img, patch, width, depth, num_heads=2)
    target.load_state_dict({k: v + 0.01 * torch.randn_like(v) if k != "pos_embed" else v
                            for k, v in encoder.state_dict().items()})

    def official(model):
        # I-JEPA keeps its final norm in `norm`; timm may hold it as `fc_norm`.
        sd = {k.replace("fc_norm.", "norm."): v for k, v in model.state_dict().items()}
        return {"module." + k: v for k, v in sd.items()}

    torch.save(
        {"encoder": official(encoder), "target_encoder": official(target),
         "predictor": {"module.predictor_embed.weight": torch.zeros(4, width)},
         "opt": {}, "scaler": None, "epoch": 3},
        path,
    )
    return {"encoder": encoder, "target_encoder": target}


def save_hf(model_cls, config, folder: Path):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    return model


def save_timm(name: str, folder: Path, **kwargs):
    """timm hub-style folder (config.json with architecture + model_args, model.safetensors)."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    save_for_hf(model, folder, model_args=kwargs, safe_serialization=True)
    return model


def save_timm_file(name: str, path: Path, **kwargs):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    save_file(model.state_dict(), str(path))
    return model


def make_imagenet_tree(root: Path, classes=("n01", "n02"), per_class=(6, 3), size=40, seed=0) -> Path:
    """root/{train,val}/<class>/*.JPEG; class k is a bright square at a class-specific corner."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for k, wnid in enumerate(classes):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                y, x = divmod(k, 2)
                img[y * size // 2:(y + 1) * size // 2, x * size // 2:(x + 1) * size // 2] += 150
                Image.fromarray(img).save(d / f"{wnid}_{i}.JPEG")
    return root
