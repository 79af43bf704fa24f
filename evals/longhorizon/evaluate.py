"""Frozen-encoder evaluation on the study's held-out scenes: linear probe and linear segmentation.

The same protocols as the demo, on device tensors instead of image folders:
- linear probe on the 12 scene classes: ``evals.linear.linear_probe`` (average-pooled last
  block and last four blocks of the target encoder, SGD lr grid chosen on a 10 % holdout of
  the fit scenes, 30 epochs), fit on the first half of the held-out set, scored on the rest;
- linear segmentation of the 6 shapes (background ignored): BatchNorm + 1x1 conv on the
  8x8 grid of last-block tokens, logits upsampled bilinearly to pixels, AdamW lr 1e-2,
  1500 iterations of batch 16 with linear warm-up and poly decay (the demo's head), mIoU
  over the shape classes of the scored half. The heads of several encoders (a stacked group's
  runs) train in one loop, each as it would alone.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


class GroupedSegmentationHeads(nn.Module):
    """G linear segmentation heads (BatchNorm + 1x1 conv, ``LinearSegmentationHead``) as one
    module over G feature maps stacked along the channels: the BatchNorm is per channel and the
    conv has G groups, so head g sees only encoder g's channels and computes what it would alone."""

    def __init__(self, heads: Sequence[LinearSegmentationHead]):
        super().__init__()
        self.groups, self.num_classes = len(heads), heads[0].num_classes
        channels = heads[0].in_channels
        self.bn = nn.BatchNorm2d(channels * self.groups)
        self.conv_seg = nn.Conv2d(channels * self.groups, self.num_classes * self.groups, 1, groups=self.groups)
        with torch.no_grad():
            for name in ("weight", "bias"):
                getattr(self.bn, name).copy_(torch.cat([getattr(h.bn, name) for h in heads]))
                getattr(self.conv_seg, name).copy_(torch.cat([getattr(h.conv_seg, name) for h in heads]))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, G, E, h, w) -> per-head logits (G, B, classes, h, w)."""
        B, G, E, h, w = maps.shape
        logits = self.conv_seg(self.bn(maps.reshape(B, G * E, h, w)))
        return logits.view(B, G, self.num_classes, h, w).transpose(0, 1)


def train_segmentation_heads(grids: Sequence[torch.Tensor], labels: torch.Tensor, fit: int, patch_size: int,
                             seeds: Sequence[int], settings: SegmentationSettings = SEG_SETTINGS
                             ) -> GroupedSegmentationHeads:
    """One head per encoder's grids (N, E, h, w), each trained as alone (its seed's init and
    minibatches, AdamW, warm-up + poly decay), all in one loop with no host sync per iteration:
    each iteration is a few launches for all heads (the study's checkpoints are evaluated by
    groups of stacked runs)."""
    device = grids[0].device
    heads = []
    for seed in seeds:
        torch.manual_seed(seed)
        heads.append(LinearSegmentationHead(grids[0].shape[1], len(SHAPES)))
    head = GroupedSegmentationHeads(heads).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    # Drawn at once, the same numbers as one draw per iteration from each seed's generator.
    picks = torch.stack([torch.randint(fit, (settings.iters, settings.batch_size),
                                       generator=torch.Generator().manual_seed(seed)) for seed in seeds], 1).to(device)
    stacked = torch.stack(list(grids))  # (G, N, E, h, w)
    runs = torch.arange(len(grids), device=device)[:, None]
    finite = torch.ones((), dtype=torch.bool, device=device)
    head.train()
    for it in range(settings.iters):
        idx = picks[it]  # (G, batch)
        logits = head(stacked[runs, idx].transpose(0, 1))  # (G, batch, classes, h, w)
        logits = upsample_logits(logits.flatten(0, 1), labels.shape[-2:], patch_size)
        target = labels[idx].flatten(0, 1)
        per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none").view(len(grids), -1)
        counted = (target != IGNORE_INDEX).view(len(grids), -1).sum(1)
        # Each head's own mean loss; their sum gives every head its own gradient.
        loss = (per_pixel.sum(1) / counted).sum()
        finite &= torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    if not bool(finite):
        # Study scenes always show an object, so every batch has labelled pixels.
        raise RuntimeError("linear segmentation: a non-finite loss while training the heads")
    return head.eval()


def segmentation_mious(grids: Sequence[torch.Tensor], segmentation: torch.Tensor, fit: int, patch_size: int,
                       seeds: Sequence[int], settings: SegmentationSettings = SEG_SETTINGS) -> list[float]:
    """mIoU on the scored scenes (after the first ``fit``) of each encoder's linear head."""
    labels = seg_labels(segmentation)
    head = train_segmentation_heads(grids, labels, fit, patch_size, seeds, settings)
    device = grids[0].device
    confusion = torch.zeros(len(grids), len(SHAPES), len(SHAPES), dtype=torch.long, device=device)
    with torch.no_grad():
        for s in range(fit, len(grids[0]), 250):
            maps = torch.stack([g[s:s + 250] for g in grids], 1)
            logits = head(maps)  # (G, b, classes, h, w)
            for g in range(len(grids)):
                pixels = upsample_logits(logits[g], labels.shape[-2:], patch_size)
                confusion[g] = update_confusion(confusion[g], pixels.argmax(1), labels[s:s + 250])
    return [float(segmentation_metrics(c.cpu(), SHAPES)["mIoU"]) for c in confusion]


def evaluate_encoders(encoders: Sequence, heldout: SceneBatch, seeds: Sequence[int], probe_epochs: int = PROBE_EPOCHS,
                      seg_settings: SegmentationSettings = SEG_SETTINGS) -> list[dict[str, float]]:
    """``evaluate_encoder`` of several encoders (a stacked group's), the segmentation heads
    trained together."""
    fit = len(heldout) // 2
    device = str(heldout.images.device)
    features = [encoder_features(e, heldout) for e in encoders]
    mious = segmentation_mious([grids for _, grids in features], heldout.segmentation, fit, encoders[0].patch_size,
                               seeds, seg_settings)
    return [{"probe_top1": probe_top1(pooled, heldout.labels, e.embed_dim, fit, seed, probe_epochs, device),
             "seg_miou": miou} for e, (pooled, _), seed, miou in zip(encoders, features, seeds, mious)]


def evaluate_encoder(encoder, heldout: SceneBatch, seed: int, probe_epochs: int = PROBE_EPOCHS,
                     seg_settings: SegmentationSettings = SEG_SETTINGS) -> dict[str, float]:
    """{"probe_top1", "seg_miou"} of a frozen encoder; the first half of ``heldout`` fits the heads."""
    return evaluate_encoders([encoder], heldout, [seed], probe_epochs, seg_settings)[0]
