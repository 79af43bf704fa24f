"""COCO detection protocol: the entry point ``tcjepa-eval coco`` calls.

    add_arguments(parser)          adds this protocol's options
    run(backbone, args) -> dict    trains + evaluates, returns box/mask AP and protocol settings

Mask R-CNN on a frozen backbone through a ViTDet-style simple feature pyramid, 1x schedule
(12 epochs) by default. Engines: ``mmdet`` (MMDetection Runner, CocoDataset, CocoMetric) and
``torchvision`` (fallback without the mm stack; pycocotools COCOeval).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evals.backbones.base import Backbone, UserError
from evals.datasets.coco import COCOInstances
from evals.detection.torchvision_engine import DetectionSettings, run_torchvision_detection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("COCO detection (Mask R-CNN)")
    g.add_argument("--data", required=True,
                   help="COCO folder holding annotations/instances_{train,val}2017.json and {train,val}2017/")
    g.add_argument("--engine", choices=("mmdet", "torchvision"), default=None,
                   help="mmdet: MMDetection Runner (needs scripts/install_mm.sh); torchvision: fallback "
                        "without the mm stack (default: mmdet when it is installed, else torchvision)")
    g.add_argument("--epochs", type=int, default=12, help="training epochs; 12 = the 1x schedule (default: 12)")
    g.add_argument("--max-iters", type=int, default=None,
                   help="stop after this many iterations (quick runs and tests); the lr steps are "
                        "laid out over the shortened run")
    g.add_argument("--batch-size", type=int, default=2, help="images per iteration (default: 2)")
    g.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: 0.02 * batch-size / 16)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay (default: 1e-4)")
    g.add_argument("--warmup-iters", type=int, default=500, help="linear warmup iterations (default: 500)")
    g.add_argument("--min-size", type=int, default=800, help="short side of resized images (default: 800)")
    g.add_argument("--max-size", type=int, default=1333, help="cap on the long side (default: 1333)")
    g.add_argument("--pyramid-channels", type=int, default=256, help="channels of the feature pyramid (default: 256)")
    g.add_argument("--rois-per-image", type=int, default=512,
                   help="RoIs sampled per training image for the box and mask heads (default: 512, as mmdet's 1x; "
                        "fewer make CPU runs much cheaper)")
    g.add_argument("--detections-per-image", type=int, default=100,
                   help="detections kept per image, COCO's maxDets (default: 100)")
    g.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    g.add_argument("--max-val-images", type=int, default=None, help="use only the first N validation images")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--checkpoint-every", type=int, default=1000,
                   help="with --out: save the training state every N iterations (default: 1000)")
    g.add_argument("--resume", action="store_true",
                   help="continue training from the checkpoint under --out (torchvision: torchvision/head_last.pt, "
                        "mmdet: mmengine's last checkpoint)")
    g.add_argument("--out", default=None,
                   help="folder for this run's coco_det_metrics.json and, under mmdet/, the mmdet logs and checkpoint "
                        "(default: mmdet uses a temporary folder; nothing is written by torchvision)")


def settings_from_args(args: argparse.Namespace) -> DetectionSettings:
    return DetectionSettings(
        epochs=args.epochs, max_iters=args.max_iters, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, min_size=args.min_size,
        max_size=args.max_size, pyramid_channels=args.pyramid_channels, rois_per_image=args.rois_per_image,
        detections_per_image=args.detections_per_image, device=args.device,
        num_workers=args.num_workers, seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume,
        work_dir=str(Path(args.out) / args.engine) if args.out else None,
    )


def installed_engine() -> str:
    """mmdet when its adapter imports (the mm stack with compiled ops), else torchvision."""
    try:
        import evals.detection.mmdet_adapter  # noqa: F401
    except ImportError:
        return "torchvision"
    return "mmdet"


def run(backbone: Backbone, args: argparse.Namespace) -> dict:
    if args.engine is None:
        args.engine = installed_engine()
        print(f"coco: --engine not given, using {args.engine} "
              f"({'the mm stack is installed' if args.engine == 'mmdet' else 'no mm stack installed'})")
    settings = settings_from_args(args)
    train_set = COCOInstances(args.data, "train", args.max_train_images, skip_empty=True)
    val_set = COCOInstances(args.data, "val", args.max_val_images)
    if args.engine == "torchvision":
        metrics = run_torchvision_detection(backbone, train_set, val_set, settings)
    else:
        try:
            from evals.detection.mmdet_adapter import run_mmdet_detection
        except ImportError as e:
            raise UserError(f"--engine mmdet: {e}") from None
        metrics = run_mmdet_detection(backbone, train_set, val_set, settings, work_dir=settings.work_dir)
    engine = metrics.pop("engine_settings", {})
    metrics["protocol"] = {
        **backbone.protocol_info(),
        "task": "coco_detection_mask_rcnn",
        "engine": args.engine,
        "data": str(Path(args.data).expanduser()),
        "num_classes": train_set.num_classes,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "resolution": f"short side {settings.min_size}, long side <= {settings.max_size}, keep ratio",
        "layers": "last block (final norm)",
        "neck": "simple feature pyramid (ViTDet), strides 4/8/16/32 + max-pooled 64",
        "detector": "Mask R-CNN",
        "epochs": settings.epochs,
        "max_iters": settings.max_iters,
        "iters": engine.get("iters"),
        "batch_size": settings.batch_size,
        "lr": settings.base_lr(),
        "schedule": "SGD momentum 0.9, linear warmup, x0.1 at 8/12 and 11/12 of training",
        "weight_decay": settings.weight_decay,
        "detections_per_image": settings.detections_per_image,
        "pyramid_channels": settings.pyramid_channels,
        "rois_per_image": settings.rois_per_image,
        "train_augmentation": "horizontal flip",
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "coco_det_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
