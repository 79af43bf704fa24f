"""Train the tiny dense-test ViT's linear segmentation head on an ADE-layout tree, saving
its checkpoint every few iterations; run directly or under torchrun. The resume tests
start it as a subprocess and kill it.

    python head_training_driver.py DATA WORK_DIR OUT.pt [--iters N] [--delay S] [--resume]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_helpers import TinyViTBackbone  # noqa: E402

from evals.datasets.ade20k import ADE20kSegmentation  # noqa: E402
from evals.distributed import init_from_env  # noqa: E402
from tcjepa.cli.rank_exit import exit_rank  # noqa: E402
from evals.segmentation.torch_engine import SegmentationSettings, train_linear_head  # noqa: E402


class SlowImages(ADE20kSegmentation):
    """``delay`` seconds per item: online training becomes slow enough to interrupt."""

    delay = 0.0

    def __getitem__(self, index: int):
        time.sleep(self.delay)
        return super().__getitem__(index)


def settings(work_dir: str, iters: int, resume: bool) -> SegmentationSettings:
    # max_cache_gb=0: online crops, so the python RNG (sampling, resize, flip) is part of the state.
    return SegmentationSettings(crop_size=32, stride=32, iters=iters, batch_size=2, lr=1e-2, warmup_iters=2,
                                max_cache_gb=0.0, work_dir=work_dir, checkpoint_every=3, resume=resume)


def train(data, work_dir, iters: int = 24, delay: float = 0.0, resume: bool = False):
    """The trained head; one thread, so every process runs the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_set = SlowImages(data, "training")
        train_set.delay = delay
        return train_linear_head(TinyViTBackbone(), train_set, settings(str(work_dir), iters, resume))[0]
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("work_dir")
    p.add_argument("out")
    p.add_argument("--iters", type=int, default=24)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    world, _ = init_from_env("cpu")
    head = train(args.data, args.work_dir, args.iters, args.delay, args.resume)
    if world.is_main:
        torch.save(head.state_dict(), args.out)
    return exit_rank(0)  # as the CLIs end (tcjepa.cli.rank_exit)


if __name__ == "__main__":
    sys.exit(main())
