"""Extract features of a small random image set with the tiny dense-test ViT; run directly
(one process) or under torchrun (several). The feature-cache tests start it as a subprocess,
so it can be killed mid-extraction.

    python extraction_driver.py CACHE_DIR [--images N] [--chunk-size C] [--batch-size B] [--delay S]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_helpers import TinyViTBackbone  # noqa: E402

from evals.distributed import init_from_env  # noqa: E402
from tcjepa.cli.rank_exit import exit_rank  # noqa: E402
from evals.features import extract_features  # noqa: E402


class TwoBlockViT(TinyViTBackbone):
    """The tiny ViT has two blocks; ``last4`` then holds both."""

    def forward_intermediates(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        return super().forward_intermediates(x, min(n, 2))


class RandomImages(torch.utils.data.Dataset):
    """Seeded random (3, 64, 64) images; ``delay`` seconds per item makes extraction slow
    enough to be interrupted."""

    split = "train"
    transform = None

    def __init__(self, n: int, delay: float = 0.0, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 64, 64, generator=generator)
        self.labels = torch.arange(n) % 3
        self.delay, self.seed = delay, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.images[i], int(self.labels[i])

    def fingerprint(self) -> str:
        return f"random-images-{len(self)}-{self.seed}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cache_dir")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)  # the same kernels in every process: bit-identical outputs
    world, device = init_from_env("cpu")
    features = extract_features(TwoBlockViT(), RandomImages(args.images, args.delay), args.cache_dir,
                                batch_size=args.batch_size, chunk_size=args.chunk_size, desc="random")
    if world.is_main:
        print(f"extracted {len(features)} rows with {world.size} process(es)")
    return exit_rank(0)  # as the CLIs end (tcjepa.cli.rank_exit)


if __name__ == "__main__":
    sys.exit(main())
