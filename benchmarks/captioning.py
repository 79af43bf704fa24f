"""Captioning throughput: images/s of `tcjepa-data captions` (decode workers, batched
generation, chunked output, merge) on generated scenes with random-weight models.

On a CPU, tiny models (the pipeline's own cost: decode, processor, generate loop, writing);
on a GPU, models with the layer sizes of the published base checkpoints (BLIP-base: ViT-B/16
at 384 px + a BERT-base decoder; a LLaVA of ViT-B/14 at 336 px + a 24-layer 1536-wide Llama),
in bf16. Random weights never stop early at an end-of-text token, so every caption runs to
--max-new-tokens: a worst case for the decoder, about what detailed captions cost.

  python -m benchmarks.captioning --out results/bench/                     # CPU: tiny blip, git
  python -m benchmarks.captioning --device cuda --size base --families blip,llava --out results/bench/
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from tcjepa.captioning.families import load_captioner
from tcjepa.captioning.generation import GenerationOptions
from tcjepa.captioning.random_models import FAMILIES, save_random_captioner
from tcjepa.captioning.run import CaptionJob, run_captions
from tcjepa.data.layouts import write_scene_dataset

from .common import format_table, metadata, write_results


def measure(family: str, size: str, device: str, images: int, image_size: int, batch: int, per_image: int,
            new_tokens: int, workers: int | None, tmp: Path) -> dict:
    model = save_random_captioner(family, tmp / f"{family}-{size}", size)
    scenes = tmp / f"scenes-{images}-{image_size}"
    if not scenes.is_dir():
        write_scene_dataset(scenes, train=images, val=0, image_size=image_size, workers=2, progress=False)
    t0 = time.perf_counter()
    captioner = load_captioner(model, device)
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in captioner.model.parameters())
    del captioner
    options = GenerationOptions(per_image=per_image, max_new_tokens=new_tokens, refill_rounds=0)
    job = CaptionJob(out=tmp / f"out-{family}-{size}-{batch}", model=model, options=options,
                     images=scenes / "images" / "train", max_words=new_tokens, min_words=1, batch_size=batch,
                     chunk_size=max(batch, 256), workers=workers, device=device, overwrite=True, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    meta = run_captions(job)
    seconds = time.perf_counter() - t0
    return {"family": family, "size": size, "params_m": params / 1e6, "device": device, "batch": batch,
            "per_image": per_image, "new_tokens": new_tokens, "images": images, "image_px": image_size,
            "load_s": load_s, "seconds": seconds, "img_per_s": images / seconds,
            "img_per_s_after_load": images / max(seconds - load_s, 1e-9),
            "captions_per_s": meta["captions"] / seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", choices=("tiny", "base"), default=None, help="default: base on a GPU, tiny on a CPU")
    p.add_argument("--families", default=None, help=f"comma list of {','.join(FAMILIES)} (default: blip,git on CPU, "
                                                    "blip,llava on GPU)")
    p.add_argument("--images", type=int, default=None, help="scenes captioned (default: 32 CPU, 512 GPU)")
    p.add_argument("--image-size", type=int, default=None, help="scene side in px (default: 64 CPU, 384 GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per generate call (default: 8 CPU, 64 GPU)")
    p.add_argument("--per-image", type=int, default=4, help="captions per image")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 16 CPU, 48 GPU")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: half the cores)")
    p.add_argument("--out", default="results/bench", help="folder for captioning_<device>.json/.csv ('' = none)")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    size = args.size or ("base" if gpu else "tiny")
    families = (args.families or ("blip,llava" if gpu else "blip,git")).split(",")
    meta = metadata(torch.device(device), ["benchmarks/captioning.py", *(argv if argv is not None else sys.argv[1:])])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            rows.append(measure(family, size, device, args.images or (512 if gpu else 32),
                                args.image_size or (384 if gpu else 64), args.batch_size or (64 if gpu else 8),
                                args.per_image, args.max_new_tokens or (48 if gpu else 16), args.workers, Path(tmp)))
            print(f"{family} ({size}): {rows[-1]['img_per_s']:.1f} images/s", flush=True)
            if args.out:  # after every row, so a run cut short by its time budget keeps what it measured
                write_results(args.out, f"captioning_{'gpu' if gpu else 'cpu'}", meta, rows)
    print(format_table(rows, [("family", "family", ""), ("size", "size", ""), ("params_m", "params (M)", ".1f"),
                              ("batch", "batch", "d"), ("per_image", "N", "d"), ("new_tokens", "tokens", "d"),
                              ("images", "images", "d"), ("load_s", "load s", ".1f"), ("seconds", "total s", ".1f"),
                              ("img_per_s", "images/s", ".2f"), ("img_per_s_after_load", "images/s w/o load", ".2f"),
                              ("captions_per_s", "captions/s", ".1f")]))
    print(f"device: {meta['device']}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
