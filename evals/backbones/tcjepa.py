"""This project's TC-JEPA / I-JEPA checkpoints and exports.

Loading is delegated to ``tcjepa.export.load_encoder``, which accepts a training
checkpoint file or an export folder and returns ``(JEPAViT, info)``; it owns the format.
"""
from __future__ import annotations

from pathlib import Path

from .base import BackboneSpec, CheckpointError, register_backbone
from .jepa_vit import IMAGENET_MEAN, IMAGENET_STD, JEPAViTBackbone
from .loading import resolve_weights

# info entries worth recording next to results (whatever load_encoder provides of them)
RECORDED_INFO = ("encoder", "key", "step", "epoch", "source")


def run_folder_checkpoint(path: Path) -> Path:
    """A training run folder (what ``tcjepa-train`` writes to train.out_dir) stands for its
    newest intact checkpoint; files and export folders pass through unchanged."""
    from tcjepa.export import CONFIG_NAME
    from tcjepa.train.checkpoint import find_resume_checkpoint

    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return path
    found = find_resume_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path}: neither an export folder (no {CONFIG_NAME}) nor a training run folder "
                              f"(no checkpoint-*.pt); pass a checkpoint file, a run folder or an export folder")
    return found


@register_backbone("tcjepa")
def build_tcjepa(spec: BackboneSpec) -> JEPAViTBackbone:
    """This project's checkpoint or export folder (TC-JEPA or I-JEPA mode); --ckpt-key picks the encoder."""
    opts = spec.take_options(ckpt_key=None, image_size=None)
    from tcjepa.export import ExportError, load_encoder

    path = run_folder_checkpoint(resolve_weights(spec.weights, spec.name))

    kwargs = {"key": opts["ckpt_key"]} if opts["ckpt_key"] else {}
    try:
        encoder, info = load_encoder(path, **kwargs)
    except CheckpointError:
        raise
    except ExportError as e:
        raise CheckpointError(str(e)) from None
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a loadable tcjepa checkpoint or export ({e})") from None
    info = dict(info or {})
    source = {"weights": str(path), "format": "tcjepa"}
    source.update({k: info[k] for k in RECORDED_INFO if k in info and not isinstance(info[k], dict)})
    return JEPAViTBackbone(
        encoder,
        image_size=opts["image_size"] or info.get("image_size"),
        mean=tuple(info.get("mean", IMAGENET_MEAN)),
        std=tuple(info.get("std", IMAGENET_STD)),
        source=source,
    )
