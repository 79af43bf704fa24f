"""ADE20k linear segmentation protocol: the entry point ``tcjepa-eval ade20k`` calls.

    add_arguments(parser)          adds this protocol's options
    run(backbone, args) -> dict    trains + evaluates, returns metrics and protocol settings

Two engines run the same protocol: ``torch`` (no mm stack) and ``mmseg`` (MMSegmentation's
ADE20KDataset, IoUMetric and Runner, with the backbone registered in its MODELS).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evals.backbones.base import Backbone, UserError
from evals.datasets.ade20k import ADE20kSegmentation, find_ade20k_root
from evals.segmentation.torch_engine import SegmentationSettings, run_torch_segmentation

LABEL_REDUCTION = "reduce_zero_label: 0 ('other') -> ignore 255, k -> k-1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = add_segmentation_arguments(
        parser, "ADE20k linear segmentation",
        "folder holding ADEChallengeData2016/{images,annotations}/{training,validation} (or that folder itself)",
        engines=("torch", "mmseg"))
    g.add_argument("--no-reduce-zero-label", dest="reduce_zero_label", action="store_false",
                   help="keep label 0 as a class (ADE20k ignores it; only for trees without 'other')")


ENGINE_HELP = {"torch": "torch: pure-torch engine, no mm stack",
               "mmseg": "mmseg: MMSegmentation Runner (needs scripts/install_mm.sh)"}


def add_segmentation_arguments(parser: argparse.ArgumentParser, title: str, data_help: str,
                               engines: tuple[str, ...], iters: int = 40000, lr: float = 1e-3,
                               weight_decay: float = 1e-4) -> argparse._ArgumentGroup:
    """The options every segmentation protocol shares (schedule, crops, checkpoints); the
    defaults given are the protocol's own."""
    g = parser.add_argument_group(title)
    g.add_argument("--data", required=True, help=data_help)
    g.add_argument("--engine", choices=engines, default=engines[0],
                   help="; ".join(ENGINE_HELP[e] for e in engines) + " (default: %(default)s)")
    g.add_argument("--iters", type=int, default=iters, help="training iterations (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="training crops per iteration (default: 16)")
    g.add_argument("--lr", type=float, default=lr, help="AdamW learning rate of the head (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--warmup-iters", type=int, default=1500,
                   help="linear warmup iterations, capped at iters/10 (default: 1500)")
    g.add_argument("--crop-size", type=int, default=512,
                   help="training crop and sliding-window size; images are resized so their short "
                        "side equals it (default: 512)")
    g.add_argument("--stride", type=int, default=None,
                   help="sliding-window stride (default: 2/3 of the crop size, 341 for 512)")
    g.add_argument("--layers", type=int, default=1,
                   help="concatenate the patch tokens of the last N blocks (1 or 4 usual) (default: 1)")
    g.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    g.add_argument("--max-val-images", type=int, default=None, help="use only the first N validation images")
    g.add_argument("--max-cache-gb", type=float, default=4.0,
                   help="torch engine: cache training features when they fit in this many GB, "
                        "else extract them online with augmentation (default: 4)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--checkpoint-every", type=int, default=1000,
                   help="with --out: save the head's training state every N iterations (default: 1000)")
    g.add_argument("--resume", action="store_true",
                   help="continue the head training from the checkpoint under --out (torch: torch/head_last.pt, "
                        "mmseg: mmengine's last checkpoint)")
    g.add_argument("--out", default=None,
                   help="folder for this run's <task>_metrics.json and, under mmseg/, the mmseg logs and checkpoint "
                        "(default: mmseg uses a temporary folder; nothing is written by torch)")
    return g


def settings_from_args(args: argparse.Namespace) -> SegmentationSettings:
    return SegmentationSettings(
        crop_size=args.crop_size, stride=args.stride or max(args.crop_size * 2 // 3, 1), layers=args.layers,
        iters=args.iters, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters, max_cache_gb=args.max_cache_gb, seed=args.seed, device=args.device,
        num_workers=args.num_workers, checkpoint_every=args.checkpoint_every, resume=args.resume,
        work_dir=str(Path(args.out) / args.engine) if args.out else None,
    )


def run(backbone: Backbone, args: argparse.Namespace) -> dict:
    settings = settings_from_args(args)
    reduce = getattr(args, "reduce_zero_label", True)
    train_set = ADE20kSegmentation(args.data, "training", reduce, args.max_train_images)
    val_set = ADE20kSegmentation(args.data, "validation", reduce, args.max_val_images)
    if args.engine == "torch":
        metrics, _ = run_torch_segmentation(backbone, train_set, val_set, settings)
    else:
        try:
            from evals.segmentation.mmseg_adapter import run_mmseg_segmentation
        except ImportError as e:
            raise UserError(f"--engine mmseg: {e}") from None
        metrics = run_mmseg_segmentation(backbone, train_set, val_set, settings, work_dir=settings.work_dir)
    metrics["protocol"] = protocol_record(
        backbone, settings, args.engine, train_set, val_set, str(find_ade20k_root(args.data)),
        "ade20k_linear_segmentation", LABEL_REDUCTION if reduce else "none", metrics.pop("engine_settings", {}))
    write_metrics(args.out, "ade20k_linear", metrics)
    return metrics


def protocol_record(backbone: Backbone, settings: SegmentationSettings, engine: str, train_set, val_set,
                    data: str, task: str, label_reduction: str, engine_settings: dict) -> dict:
    """The settings a linear segmentation result records beside its numbers."""
    return {
        **backbone.protocol_info(),
        "task": task,
        "engine": engine,
        "data": data,
        "num_classes": train_set.num_classes,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "resolution": f"short side resized to {settings.crop_size} (long side <= {4 * settings.crop_size}), keep ratio",
        "layers": f"last {settings.layers} block(s), concatenated",
        "head": "BatchNorm + 1x1 conv on patch tokens, bilinear upsampling",
        "crop_size": settings.crop_size,
        "slide_stride": settings.stride,
        "label_reduction": label_reduction,
        "iters": settings.iters,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "schedule": f"AdamW, linear warmup {settings.effective_warmup()} iters, poly(1.0) decay",
        **{k: v for k, v in engine_settings.items() if k.startswith("train_")},
    }


def write_metrics(out, task: str, metrics: dict) -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{task}_metrics.json").write_text(json.dumps(metrics, indent=2))
