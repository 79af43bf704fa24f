"""Frozen-encoder evaluation on the study's held-out scenes: linear probe and linear segmentation.

The same protocols as the demo, on device tensors instead of image folders:
- linear probe on the 12 scene classes: ``evals.linear.linear_probe`` (average-pooled last
  block and last four blocks of the target encoder, SGD lr grid chosen on a 10 % holdout of
  the fit scenes, 30 epochs), fit on the first half of the held-out set, scored on the rest;
- linear segmentation of the 6 shapes (background ignored): BatchNorm + 1x1 conv on the
  8x8 grid of last-block tokens, logits upsampled bilinearly to pixels, AdamW lr 1e-2,
  1500 iterations of batch 16 with linear warm-up and poly decay (the demo's head), mIoU
  over the shape classes of the scored half.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evals.features import FeatureSet
from evals.linear import linear_probe
from evals.segmentation.linear_head import LinearSegmentationHead, upsample_logits
from evals.datasets.ade20k import IGNORE_INDEX
from evals.segmentation.torch_engine import SegmentationSettings, lr_factor, segmentation_metrics, update_confusion
from tcjepa.data.scenes import SHAPES
from tcjepa.study.device_scenes import SceneBatch

SEG_SETTINGS = SegmentationSettings(iters=1500, batch_size=16, lr=1e-2, warmup_iters=150)
PROBE_EPOCHS = 30


@torch.no_grad()
def encoder_features(encoder, scenes: SceneBatch, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, 5E): last block then last four blocks; and last-block grids (N, E, h, w)."""
    encoder.eval()
    pooled, grids = [], []
    h, w = encoder.patch_embed.grid_size
    for s in range(0, len(scenes), batch_size):
        blocks = encoder.forward_block_outputs(scenes.select(slice(s, s + batch_size)).normalized_images(), 4)
        means = [b.mean(1) for b in blocks]
        pooled.append(torch.cat([means[-1], *means], 1).cpu())  # the probe takes numpy features
        grids.append(blocks[-1].transpose(1, 2).reshape(len(blocks[-1]), -1, h, w))
    return torch.cat(pooled), torch.cat(grids)


def _feature_set(pooled: torch.Tensor, labels: torch.Tensor, width: int) -> FeatureSet:
    x = pooled.numpy()
    return FeatureSet(last1=x[:, :width], last4=x[:, width:], global_=x[:, :width],
                      labels=labels.cpu().numpy().astype(np.int64), meta={})


def probe_top1(pooled: torch.Tensor, labels: torch.Tensor, width: int, fit: int, seed: int,
               epochs: int = PROBE_EPOCHS, device: str = "cpu") -> float:
    result = linear_probe(_feature_set(pooled[:fit], labels[:fit], width),
                          _feature_set(pooled[fit:], labels[fit:], width), epochs=epochs, seed=seed,
                          device=device)
    return float(result["top1"])


def seg_labels(segmentation: torch.Tensor) -> torch.Tensor:
    """Shapes 1..6 -> classes 0..5; background -> ignored (reduce_zero_label, as the demo's ADE layout)."""
    labels = segmentation.long() - 1
    return torch.where(labels < 0, torch.full_like(labels, IGNORE_INDEX), labels)


def segmentation_miou(grids: torch.Tensor, segmentation: torch.Tensor, fit: int, patch_size: int,
                      seed: int, settings: SegmentationSettings = SEG_SETTINGS) -> float:
    torch.manual_seed(seed)
    device = grids.device
    labels = seg_labels(segmentation)
    head = LinearSegmentationHead(grids.shape[1], len(SHAPES)).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    g = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(settings.iters):
        idx = torch.randint(fit, (settings.batch_size,), generator=g).to(device)
        logits = upsample_logits(head([grids[idx]]), labels.shape[-2:], patch_size)
        loss = F.cross_entropy(logits, labels[idx], ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        schedule.step()
    head.eval()
    confusion = torch.zeros(len(SHAPES), len(SHAPES), dtype=torch.long, device=device)
    with torch.no_grad():
        for s in range(fit, len(grids), 250):
            logits = upsample_logits(head([grids[s:s + 250]]), labels.shape[-2:], patch_size)
            confusion = update_confusion(confusion, logits.argmax(1), labels[s:s + 250])
    return float(segmentation_metrics(confusion.cpu(), SHAPES)["mIoU"])


def evaluate_encoder(encoder, heldout: SceneBatch, seed: int, probe_epochs: int = PROBE_EPOCHS,
                     seg_settings: SegmentationSettings = SEG_SETTINGS) -> dict[str, float]:
    """{"probe_top1", "seg_miou"} of a frozen encoder; the first half of ``heldout`` fits the heads."""
    fit = len(heldout) // 2
    pooled, grids = encoder_features(encoder, heldout)
    device = str(heldout.images.device)
    return {"probe_top1": probe_top1(pooled, heldout.labels, encoder.embed_dim, fit, seed, probe_epochs, device),
            "seg_miou": segmentation_miou(grids, heldout.segmentation, fit, encoder.patch_size, seed, seg_settings)}
