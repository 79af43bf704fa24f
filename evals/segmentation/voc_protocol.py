"""Pascal VOC 2012 linear segmentation: the entry point ``tcjepa-eval voc`` calls.

The ADE20k linear protocol's head, schedule, crops and sliding-window inference (pure-torch
engine), on VOC's 21 classes with label 0 (background) a class and 255 (object borders)
ignored; trained on ``train`` (1464 images), scored on ``val`` (1449).
"""
from __future__ import annotations

import argparse

from evals.backbones.base import Backbone
from evals.datasets.voc import VOCSegmentation
from evals.segmentation.protocol import add_segmentation_arguments, protocol_record, settings_from_args, write_metrics
from evals.segmentation.torch_engine import run_torch_segmentation

TASK = "voc_linear"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_segmentation_arguments(parser, "Pascal VOC 2012 linear segmentation",
                               "folder holding VOCdevkit/VOC2012 (or VOCdevkit, or VOC2012 itself)", engines=("torch",))


def run(backbone: Backbone, args: argparse.Namespace) -> dict:
    settings = settings_from_args(args)
    train_set = VOCSegmentation(args.data, "train", args.max_train_images)
    val_set = VOCSegmentation(args.data, "val", args.max_val_images)
    metrics, _ = run_torch_segmentation(backbone, train_set, val_set, settings)
    metrics["protocol"] = protocol_record(
        backbone, settings, args.engine, train_set, val_set, str(val_set.data_root), "voc2012_linear_segmentation",
        "none: 0 = background is a class, 255 = object borders ignored", metrics.pop("engine_settings", {}))
    metrics["task"] = TASK
    write_metrics(args.out, TASK, metrics)
    return metrics
