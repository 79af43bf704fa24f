"""What every evaluation command shares: the backbone options, building the backbone, and
writing the run record (``evals.results``) with the heads' curves beside it."""
from __future__ import annotations

import argparse
from typing import Optional

from evals.backbones import BackboneSpec, UserError, available_backbones, build_backbone

METHOD_NAMES = {"tcjepa": "TC-JEPA", "ijepa": "I-JEPA", "dinov2": "DINOv2", "siglip2": "SigLIP2"}


def add_backbone_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--ckpt", metavar="PATH",
                   help="this project's training checkpoint or export folder (= --backbone tcjepa --weights PATH)")
    g.add_argument("--backbone", metavar="NAME", help=f"registered backbone: {', '.join(available_backbones())}")
    g.add_argument("--weights", metavar="PATH",
                   help="weights file/folder, or a hub id already in the local HF cache (never downloaded)")
    g.add_argument("--ckpt-key", metavar="KEY",
                   help="which encoder of a training checkpoint: target_encoder (default) or encoder")
    g.add_argument("--arch", metavar="NAME",
                   help="architecture when the weights do not say (I-JEPA: vit_huge; timm file: its model name)")
    g.add_argument("--image-size", type=int, metavar="PX", help="evaluation resolution (default: the backbone's)")
    g.add_argument("--max-num-patches", type=int, metavar="N", help="SigLIP2 NaFlex: pad sequences to N tokens")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    g.add_argument("--method", help="method name recorded in results (default: from the backbone)")
    g.add_argument("--pretraining-data", default="unknown", help="pretraining data recorded in results")
    g.add_argument("--out", metavar="DIR", help="write the metrics JSON of the run here")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a worker-free count, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def backbone_from_args(args: argparse.Namespace):
    if args.ckpt and (args.backbone not in (None, "tcjepa") or args.weights):
        raise UserError("--ckpt PATH is shorthand for --backbone tcjepa --weights PATH; give one or the other")
    name = "tcjepa" if args.ckpt else args.backbone
    if not name:
        raise UserError("no backbone: pass --ckpt PATH, or --backbone NAME --weights PATH")
    options = {"ckpt_key": args.ckpt_key, "arch": args.arch, "image_size": args.image_size,
               "max_num_patches": args.max_num_patches}
    spec = BackboneSpec(name, args.ckpt or args.weights, {k: v for k, v in options.items() if v is not None})
    backbone = build_backbone(spec).to(args.device)
    return spec, backbone


def backbone_info(spec: BackboneSpec, backbone) -> dict:
    return {"name": spec.name, **backbone.protocol_info()}


def method_name(args, spec: BackboneSpec) -> str:
    return args.method or METHOD_NAMES.get(spec.name, spec.name)


def write_record(args, record_kwargs: dict, curves: Optional[list] = None) -> None:
    """Write the run JSON (and the heads' learning curves beside it) into --out; print the headline."""
    from evals.curves import write_curves
    from evals.results import run_record, write_run

    if getattr(args, "config_values", None) is not None:
        record_kwargs["protocol"] = {**record_kwargs["protocol"], "config": {
            "file": args.config, "overrides": list(args.overrides), "values": args.config_values}}
    record = run_record(**record_kwargs)
    line = f"{record['task']}: {record['metric']} = {record['value']:.2f}"
    if args.out:
        path = write_run(record, args.out)
        line += f"  -> {path}"
        written = write_curves(curves or [], path)
        if written:
            line += f" (curves: {', '.join(p.name for p in written)})"
    print(line)
