"""Data-loader throughput on CPU: JPEG decode + RandomResizedCrop 224 + normalise + mask collator.

Builds a small captioned image folder of synthetic JPEGs (ImageNet-like: 500x375, quality 90,
natural-image-like low-frequency content plus noise) and reads it with the real pretraining
pipeline (``CaptionedImageFolder`` + ``PretrainTransform`` + ``MultiBlockMaskCollator``):

1. in one process, one torch thread (= per core): decode alone, decode + crop + normalise
   (``dataset[i]``), and the collator per batch (stack + masks); their sum is the per-process
   rate a loader worker can sustain;
2. ``DataLoader`` with W worker processes: images/s in all and per worker.

Target: >= 150 images/s per worker process (per core).

  python -m benchmarks.loader --out results/bench/
  python -m benchmarks.loader --images 64 --workers 1 --out ''      # smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tcjepa.config import MaskConfig
from tcjepa.data.captions import CaptionedImageFolder, decode_image
from tcjepa.data.masks import MultiBlockMaskCollator
from tcjepa.data.transforms import PretrainTransform

from .common import format_table, metadata, write_results

TARGET_PER_CORE = 150.0


def make_jpeg_folder(root: Path, count: int, size: tuple[int, int] = (500, 375), quality: int = 90,
                     seed: int = 0) -> float:
    """``count`` JPEGs + captions.jsonl under ``root``; returns the mean file size in KiB."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    w, h = size
    lines, sizes = [], []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        path = root / "images" / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=quality)
        sizes.append(path.stat().st_size)
        lines.append(json.dumps({"image": f"images/{i:06d}.jpg",
                                 "captions": [f"synthetic image {i}, caption {j}" for j in range(8)]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return statistics.mean(sizes) / 1024


def per_process(dataset: CaptionedImageFolder, collator: MultiBlockMaskCollator, batch: int,
                repeats: int) -> dict[str, float]:
    n = len(dataset)
    t0 = time.perf_counter()
    for r in range(repeats):
        for i in range(n):
            decode_image(dataset.image_path(i), "bench")
    decode = (time.perf_counter() - t0) / (n * repeats)
    samples = []
    t0 = time.perf_counter()
    for r in range(repeats):
        samples = [dataset[(i, r)] for i in range(n)]
    item = (time.perf_counter() - t0) / (n * repeats)
    groups = [samples[i:i + batch] for i in range(0, n - batch + 1, batch)] or [samples]
    t0 = time.perf_counter()
    for g in groups:
        collator(g)
    collate = (time.perf_counter() - t0) / sum(len(g) for g in groups)
    t0 = time.perf_counter()
    for g in groups:
        collator.sample(len(g), (0, id(g)))
    masks = (time.perf_counter() - t0) / sum(len(g) for g in groups)
    return {"decode_ms": 1e3 * decode, "decode_crop_norm_ms": 1e3 * item, "collate_ms_per_img": 1e3 * collate,
            "masks_ms_per_img": 1e3 * masks, "img_per_s": 1.0 / (item + collate)}


def with_workers(dataset, collator, batch: int, workers: int, batches: int) -> dict[str, float]:
    keys = [(i % len(dataset), i // len(dataset)) for i in range(batch * (batches + 1))]
    loader = DataLoader(_Keyed(dataset, keys), batch_size=batch, num_workers=workers, collate_fn=collator,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not timed
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b)
    dt = time.perf_counter() - t0
    return {"img_per_s": n / dt, "img_per_s_per_worker": n / dt / max(1, workers)}


class _Keyed(torch.utils.data.Dataset):
    def __init__(self, dataset, keys):
        self.dataset, self.keys = dataset, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.dataset[self.keys[i]]


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128, help="synthetic JPEGs in the folder")
    p.add_argument("--size", default="500x375", help="JPEG width x height")
    p.add_argument("--image-size", type=int, default=224, help="crop size")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="passes over the folder, in-process")
    p.add_argument("--workers", default="1,2", help="comma list of DataLoader worker counts")
    p.add_argument("--batches", type=int, default=8, help="timed batches per worker count")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--tag", default="")
    p.add_argument("--data", default="", help="use this folder (kept) instead of a temporary one")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    w, h = (int(x) for x in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data or tmp)
        kib = make_jpeg_folder(root, args.images, (w, h))
        dataset = CaptionedImageFolder(root, transform=PretrainTransform(args.image_size, (0.3, 1.0)), num_captions=8)
        grid = (args.image_size // args.patch_size,) * 2
        collator = MultiBlockMaskCollator(MaskConfig(), grid, seed=0)
        rows = [{"setup": "1 process, 1 thread", "workers": 0, **per_process(dataset, collator, args.batch, args.repeats)}]
        rows[0]["img_per_s_per_worker"] = rows[0]["img_per_s"]
        for nw in [int(x) for x in args.workers.split(",") if x.strip()]:
            rows.append({"setup": f"DataLoader, {nw} workers", "workers": nw,
                         **with_workers(dataset, collator, args.batch, nw, args.batches)})
    for r in rows:
        r["meets_target"] = r["img_per_s_per_worker"] >= TARGET_PER_CORE
    meta = metadata(torch.device("cpu"), sys.argv if argv is None else ["benchmarks.loader", *argv])
    meta["settings"] = {**vars(args), "jpeg_kib_mean": round(kib, 1), "target_img_per_s_per_core": TARGET_PER_CORE}
    print(f"\n{meta['device']} | torch {meta['torch']} | {args.images} JPEGs {w}x{h} (mean {kib:.0f} KiB) -> "
          f"RandomResizedCrop {args.image_size} + masks ({grid[0]}x{grid[1]} grid), batch {args.batch}")
    print(format_table(rows, [
        ("setup", "setup", ""), ("decode_ms", "decode ms", ".2f"), ("decode_crop_norm_ms", "+crop+norm ms", ".2f"),
        ("collate_ms_per_img", "collate ms/img", ".3f"), ("masks_ms_per_img", "masks ms/img", ".3f"),
        ("img_per_s", "img/s", ".1f"), ("img_per_s_per_worker", "img/s/worker", ".1f"), ("meets_target", ">=150", ""),
    ]))
    if args.out:
        j, c = write_results(args.out, f"loader_cpu{'_' + args.tag if args.tag else ''}", meta, rows)
        print(f"wrote {j} and {c}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
