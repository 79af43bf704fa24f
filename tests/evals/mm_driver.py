"""Run the MMSegmentation linear head or the MMDetection Mask R-CNN adapter on a tiny tree
with the tiny dense-test ViT, directly or under torchrun (mmengine's launcher='pytorch').

    python mm_driver.py {seg,det} DATA WORK_DIR [--iters N] [--checkpoint-every K] [--resume]

Rank 0 writes WORK_DIR/driver.json: the metrics and the world mmengine saw.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_helpers import TinyViTBackbone  # noqa: E402

from evals.distributed import init_from_env  # noqa: E402
from tcjepa.cli.rank_exit import exit_rank  # noqa: E402


def run_seg(data: str, work_dir: str, args) -> dict:
    from evals.datasets.ade20k import ADE20kSegmentation
    from evals.segmentation.mmseg_adapter import run_mmseg_segmentation
    from evals.segmentation.torch_engine import SegmentationSettings

    settings = SegmentationSettings(crop_size=32, stride=32, iters=args.iters, batch_size=2, lr=1e-2, warmup_iters=1,
                                    checkpoint_every=args.checkpoint_every, resume=args.resume)
    return run_mmseg_segmentation(TinyViTBackbone(), ADE20kSegmentation(data, "training"),
                                  ADE20kSegmentation(data, "validation"), settings, work_dir=work_dir)


def run_det(data: str, work_dir: str, args) -> dict:
    from evals.datasets.coco import COCOInstances
    from evals.detection.mmdet_adapter import run_mmdet_detection
    from evals.detection.torchvision_engine import DetectionSettings

    settings = DetectionSettings(max_iters=args.iters, batch_size=2, min_size=64, max_size=64, pyramid_channels=16,
                                 rois_per_image=16, warmup_iters=1, checkpoint_every=args.checkpoint_every,
                                 resume=args.resume)
    return run_mmdet_detection(TinyViTBackbone(), COCOInstances(data, "train", skip_empty=True),
                               COCOInstances(data, "val"), settings, work_dir=work_dir)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("seg", "det"))
    p.add_argument("data")
    p.add_argument("work_dir")
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    world, _ = init_from_env("cpu")
    metrics = (run_seg if args.kind == "seg" else run_det)(args.data, args.work_dir, args)
    from mmengine.dist import get_world_size

    if world.is_main:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
        (Path(args.work_dir) / "driver.json").write_text(json.dumps(
            {"metrics": numbers, "mm_world_size": get_world_size(), "ranks": world.size}))
    return exit_rank(0)  # as the CLIs end (tcjepa.cli.rank_exit)


if __name__ == "__main__":
    sys.exit(main())
