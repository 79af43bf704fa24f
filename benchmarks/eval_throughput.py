"""Evaluation throughput: images/s of feature extraction per backbone, seconds per iteration
of each head training.

Backbones are the paper's (JEPA ViTs, random weights: speed does not depend on them). Rows:

  extract_model   the extraction forward (last-4 blocks + pooling, bf16 autocast on GPU)
                  on ready tensors: images/s
  extract_cache   ``extract_features`` end to end on an in-memory image set: forward + the
                  float16 chunked cache writes (pwrite + fsync per chunk): images/s
  head_linear     one step of the linear-probe grid (7 lrs x {last1, last4} heads in one pass)
  head_seg        one step of the ADE20k linear head on cached crop features (torch engine)
  head_seg_online one step with the backbone forward of the crops (the online mode)
  head_det        one Mask R-CNN training step, frozen backbone + simple pyramid (torchvision)
  head_upernet    one ADE20k fine-tuning step, backbone + UperNet (mmseg; skipped without it)

Target: ViT-L/16 at 224 px, bf16, >= 2000 images/s of extraction on one H100/H200.

  python -m benchmarks.eval_throughput --out results/bench/                     # CPU, tiny
  python -m benchmarks.eval_throughput --device cuda --models vit_large:16,vit_huge:14 \\
      --batch-size 256 --out results/bench/ --tag gpu                          # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F

from evals.backbones.jepa_vit import JEPAViTBackbone
from evals.features import NUM_LAST_LAYERS, extract_features, pooled_features
from evals.linear import SGD_LRS, LinearHeadGrid
from evals.segmentation.linear_head import LinearSegmentationHead, backbone_feature_maps, upsample_logits
from tcjepa.models.vit import build_encoder

from .common import format_table, metadata, write_results

TARGET_IMG_S = {("vit_large", 16, 224): 2000.0}


def timed(step: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_backbone(name: str, patch: int, image_size: int, device: torch.device) -> JEPAViTBackbone:
    torch.manual_seed(0)
    return JEPAViTBackbone(build_encoder(name, image_size, patch)).freeze().to(device)


class _Tensors(torch.utils.data.Dataset):
    split, transform = "bench", None

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0

    def fingerprint(self) -> str:
        return f"bench-{tuple(self.images.shape)}-{time.time_ns()}"  # never a cache hit


def extraction_rows(backbone, model: str, image_size: int, batch: int, iters: int, warmup: int,
                    device: torch.device) -> list[dict]:
    use_amp = device.type == "cuda"
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    with torch.no_grad():
        seconds = timed(lambda: pooled_features(backbone, images, use_amp), device, iters, warmup)
    rows = [{"kind": "extract_model", "model": model, "image_size": image_size, "batch": batch,
             "dtype": "bf16" if use_amp else "fp32", "images_per_s": batch / seconds, "s_per_iter": seconds}]
    dataset = _Tensors(torch.randn(batch * iters, 3, image_size, image_size))
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        extract_features(backbone, dataset, cache, batch_size=batch, device=str(device), desc="bench",
                         chunk_size=batch * max(iters // 4, 1))
        elapsed = time.perf_counter() - t0
    rows.append({**rows[0], "kind": "extract_cache", "images_per_s": len(dataset) / elapsed,
                 "s_per_iter": elapsed / iters})
    target = TARGET_IMG_S.get((model.split(":")[0], backbone.patch_size, image_size))
    if target and device.type == "cuda":
        rows[0].update(target_images_per_s=target, ratio_to_target=rows[0]["images_per_s"] / target)
    return rows


def linear_head_step(dim: int, classes: int, batch: int, device: torch.device) -> Callable[[], None]:
    grid = LinearHeadGrid({"last1": dim, "last4": dim * NUM_LAST_LAYERS}, SGD_LRS, classes).to(device)
    opt = torch.optim.SGD(grid.param_groups(0.0), momentum=0.9)
    x = {"last1": torch.randn(batch, dim, device=device), "last4": torch.randn(batch, dim * NUM_LAST_LAYERS, device=device)}
    y = torch.randint(classes, (batch,), device=device)

    def step():
        loss = sum(F.cross_entropy(lg, y) for lg in grid(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def seg_head_step(backbone, crop: int, batch: int, classes: int, online: bool, device: torch.device):
    head = LinearSegmentationHead(backbone.embed_dim, classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    grid = crop // backbone.patch_size
    crops = torch.randn(batch, 3, crop, crop, device=device)
    cached = torch.randn(batch, backbone.embed_dim, grid, grid, device=device)
    labels = torch.randint(classes, (batch, crop, crop), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = torch.cat(backbone_feature_maps(backbone, crops, 1), 1).float() if online else cached
            logits = head([feats])
        loss = F.cross_entropy(upsample_logits(logits.float(), (crop, crop), backbone.patch_size), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def det_step(backbone, size: int, batch: int, device: torch.device):
    from evals.detection.torchvision_engine import DetectionSettings, build_mask_rcnn

    settings = DetectionSettings(min_size=size, max_size=size, batch_size=batch)
    model = build_mask_rcnn(backbone, 80, settings).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=settings.base_lr(), momentum=0.9)
    images = [torch.rand(3, size, size, device=device) for _ in range(batch)]
    masks = torch.zeros(2, size, size, dtype=torch.uint8, device=device)
    masks[0, : size // 2, : size // 2] = 1
    masks[1, size // 4:, size // 3:] = 1
    box = torch.tensor([[0, 0, size / 2, size / 2], [size / 3, size / 4, size - 1, size - 1]], device=device)
    targets = [{"boxes": box, "labels": torch.tensor([1, 2], device=device), "masks": masks} for _ in images]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def upernet_step(backbone, crop: int, batch: int, classes: int, device: torch.device):
    """One UperNet fine-tuning step through mmseg's model (backbone trained too); needs mmseg."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from evals.segmentation.torch_engine import SegmentationSettings
    from evals.segmentation.upernet_finetune import BACKBONE_LR_MULT, build_model, upernet_config

    settings = SegmentationSettings(crop_size=crop, stride=crop * 2 // 3)
    model = build_model(upernet_config(backbone, classes, settings)).to(device).train()
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": head_params},
                             {"params": list(model.backbone.parameters()), "lr": 1e-4 * BACKBONE_LR_MULT}], lr=1e-4)
    inputs = torch.randn(batch, 3, crop, crop, device=device)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(classes, (1, crop, crop), device=device)))
        sample.set_metainfo(dict(img_shape=(crop, crop), pad_shape=(crop, crop)))
        samples.append(sample)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = model.loss(inputs, samples)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def head_rows(backbone, model: str, args, device: torch.device) -> list[dict]:
    cpu = device.type != "cuda"
    crop, seg_batch = (224, 4) if cpu else (512, 16)
    det_size, det_batch = (256, 1) if cpu else (1024, 2)
    steps = {
        "head_linear": (lambda: linear_head_step(backbone.embed_dim, 100 if cpu else 1000, 256, device),
                        "batch 256 features, 14 heads"),
        "head_seg": (lambda: seg_head_step(backbone, crop, seg_batch, 150, False, device),
                     f"{seg_batch} cached crops of {crop} px"),
        "head_seg_online": (lambda: seg_head_step(backbone, crop, seg_batch, 150, True, device),
                            f"{seg_batch} crops of {crop} px through the backbone"),
        "head_det": (lambda: det_step(backbone, det_size, det_batch, device), f"{det_batch} images of {det_size} px"),
        "head_upernet": (lambda: upernet_step(backbone, crop, seg_batch, 150, device),
                         f"{seg_batch} crops of {crop} px, backbone + UperNet trained (mmseg)"),
    }
    rows = []
    for kind, (make, what) in steps.items():
        if kind.split("_")[1] not in args.heads:
            continue
        try:
            step = make()
        except ImportError as e:  # the mm stack is optional
            print(f"{kind}: skipped ({e})")
            continue
        seconds = timed(step, device, args.head_iters, 1)
        rows.append({"kind": kind, "model": model, "what": what, "dtype": "fp32" if cpu else "bf16",
                     "s_per_iter": seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="vit_tiny:16", help="comma-separated ARCH:PATCH (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="extraction batch (default: %(default)s)")
    p.add_argument("--iters", type=int, default=8, help="timed extraction batches (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--heads", default="linear,seg,det,upernet", help="head trainings to time (default: %(default)s)")
    p.add_argument("--head-iters", type=int, default=3, help="timed steps per head (default: %(default)s)")
    p.add_argument("--out", default="results/bench", help="folder for the JSON + CSV ('' = print only)")
    p.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for model in args.models.split(","):
        name, patch = model.split(":")
        backbone = build_backbone(name, int(patch), args.image_size, device)
        rows += extraction_rows(backbone, model, args.image_size, args.batch_size, args.iters, args.warmup, device)
        rows += head_rows(backbone, model, args, device)
        del backbone
    print(format_table(rows, [("kind", "row", ""), ("model", "model", ""), ("dtype", "dtype", ""),
                              ("batch", "batch", "d"), ("images_per_s", "img/s", ".1f"),
                              ("s_per_iter", "s/iter", ".4f"), ("ratio_to_target", "vs target", ".2f"),
                              ("what", "step", "")]))
    if args.out:
        meta = metadata(device, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        # CPU figures on a shared machine depend on the load: it is recorded with them.
        extra = {"targets_images_per_s": {f"{a}/{p} {s}px": v for (a, p, s), v in TARGET_IMG_S.items()},
                 "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        paths = write_results(args.out, f"eval_throughput_{args.tag or device.type}", meta, rows, extra)
        print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
