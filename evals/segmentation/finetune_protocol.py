"""ADE20k fine-tuning with UperNet (MMSegmentation): the entry point ``tcjepa-eval ade20k-ft``.

Backbone and head train together (the backbone at a tenth of the lr); mIoU on ADE20k's
validation split with slide inference. Needs the mm stack (scripts/install_mm.sh).
"""
from __future__ import annotations

import argparse

from evals.backbones.base import Backbone, UserError
from evals.datasets.ade20k import ADE20kSegmentation, find_ade20k_root
from evals.segmentation.protocol import (
    LABEL_REDUCTION,
    add_segmentation_arguments,
    protocol_record,
    settings_from_args,
    write_metrics,
)

TASK = "ade20k_ft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = add_segmentation_arguments(
        parser, "ADE20k fine-tuning (UperNet)",
        "folder holding ADEChallengeData2016/{images,annotations}/{training,validation} (or that folder itself)",
        engines=("mmseg",), iters=160000, lr=1e-4, weight_decay=0.05)
    g.add_argument("--decode-channels", type=int, default=512, help="UPerHead channels (default: %(default)s)")


def run(backbone: Backbone, args: argparse.Namespace) -> dict:
    try:
        from evals.segmentation.upernet_finetune import run_upernet_finetune
    except ImportError as e:
        raise UserError(f"ade20k-ft needs the mm stack: {e}") from None
    settings = settings_from_args(args)
    train_set = ADE20kSegmentation(args.data, "training", True, args.max_train_images)
    val_set = ADE20kSegmentation(args.data, "validation", True, args.max_val_images)
    metrics = run_upernet_finetune(backbone, train_set, val_set, settings, args.decode_channels, settings.work_dir)
    engine = metrics.pop("engine_settings")
    record = protocol_record(backbone, settings, args.engine, train_set, val_set, str(find_ade20k_root(args.data)),
                             "ade20k_upernet_finetuning", LABEL_REDUCTION, engine)
    record.update(head=engine["model"], layers=f"blocks {engine['backbone_blocks']} (0-based)", trained="backbone + head",
                  backbone_lr_mult=engine["backbone_lr_mult"], decode_channels=engine["decode_channels"])
    metrics["protocol"], metrics["task"] = record, TASK
    write_metrics(args.out, TASK, metrics)
    return metrics
