"""ADE20k linear segmentation in plain torch: no mm stack needed.

Same protocol as the MMSegmentation engine (``mmseg_adapter.py``): images resized so the
short side equals the crop size (long side capped at 4x, mmcv's ``Resize(scale=(4c, c),
keep_ratio=True)``), a BN + 1x1 conv head on frozen patch tokens trained with AdamW and a
warmup + poly schedule, sliding-window inference, logits resized to the label resolution,
mIoU / aAcc from a confusion matrix. One deliberate difference: to spend backbone compute
once, training features are extracted once per fixed crop and cached (no random
resize/flip), unless they would not fit in ``max_cache_gb``; then crops are sampled and
augmented online. The protocol settings returned say which one ran.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evals.backbones.base import Backbone
from evals.datasets.ade20k import IGNORE_INDEX
from evals.distributed import current_world, shard
from evals.head_training import HeadCheckpoint, all_reduce_sum, autocast, data_parallel
from evals.segmentation.linear_head import LinearSegmentationHead, backbone_feature_maps, upsample_logits


@dataclass
class SegmentationSettings:
    crop_size: int = 512
    stride: int = 341
    layers: int = 1  # concat of the last n blocks
    iters: int = 40000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 1500
    max_cache_gb: float = 4.0
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    work_dir: Optional[str] = None  # head checkpoint goes here (every checkpoint_every iters)
    checkpoint_every: int = 1000
    resume: bool = False  # continue from work_dir's checkpoint

    def effective_warmup(self) -> int:
        return min(self.warmup_iters, self.iters // 10)


# ----------------------------------------------------------------------------- preprocessing

def protocol_size(height: int, width: int, crop_size: int) -> tuple[int, int]:
    """(h, w) after mmcv's keep-ratio ``Resize(scale=(4 * crop, crop))``."""
    factor = min(4 * crop_size / max(height, width), crop_size / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, half-pixel centres, no antialiasing, rounded to uint8: what mmcv's cv2
    ``imresize`` does, so both engines see the same pixels."""
    if image.shape[:2] == tuple(size):
        return image
    x = torch.tensor(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour with cv2's (floor) source indexing."""
    if label.shape == tuple(size):
        return label
    x = torch.tensor(label)[None, None].float()
    return F.interpolate(x, size=size, mode="nearest")[0, 0].to(torch.int64).numpy()


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255)  # copies: PIL arrays are read-only
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) windows, the grid of mmseg's ``EncoderDecoder.slide_inference``."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


def pad_crop(x: torch.Tensor, label: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a crop smaller than crop x crop: image with 0 (after normalisation), label with ignore."""
    ph, pw = crop - x.shape[-2], crop - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
        label = F.pad(label, (0, max(pw, 0), 0, max(ph, 0)), value=IGNORE_INDEX)
    return x, label


class _Prepared(torch.utils.data.Dataset):
    """Resized + normalised images (in DataLoader workers) with their labels."""

    def __init__(self, dataset, backbone: Backbone, crop_size: int, resize_labels: bool):
        self.dataset, self.crop_size, self.resize_labels = dataset, crop_size, resize_labels
        self.mean, self.std = tuple(backbone.mean), tuple(backbone.std)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        size = protocol_size(*image.shape[:2], self.crop_size)
        if self.resize_labels:
            label = resize_label(label, size)
        return normalize(resize_image(image, size), self.mean, self.std), torch.from_numpy(label)


def _loader(dataset, settings: SegmentationSettings, shuffle: bool = False):
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=shuffle,
                                       num_workers=settings.num_workers)


# ----------------------------------------------------------------------------- metrics

def update_confusion(confusion: torch.Tensor, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """confusion[true, pred] += pixel counts; ignore-index and out-of-range labels are skipped."""
    k = confusion.shape[0]
    valid = (label != IGNORE_INDEX) & (label >= 0) & (label < k)
    idx = label[valid].long() * k + pred[valid].long()
    confusion += torch.bincount(idx, minlength=k * k).view(k, k).to(confusion)
    return confusion


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """mIoU / aAcc / mAcc in percent (as MMSegmentation's IoUMetric reports them).

    Classes absent from both labels and predictions have no IoU and are left out of the
    mean (per_class_iou holds None for them), as in mmseg.
    """
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union  # 0/0 -> nan for absent classes
    acc = tp / cm.sum(1)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou.numpy()) * 100) if union.gt(0).any() else float("nan"),
        "aAcc": float(tp.sum() / total * 100) if total > 0 else float("nan"),
        "mAcc": float(np.nanmean(acc.numpy()) * 100) if cm.sum(1).gt(0).any() else float("nan"),
        "per_class_iou": {name: (None if math.isnan(v) else v * 100) for name, v in zip(class_names, iou.tolist())},
    }


# ----------------------------------------------------------------------------- training

def _train_crops(backbone: Backbone, train_set, settings: SegmentationSettings):
    """Fixed sliding-window crops of every resized training image: (features, label) pairs."""
    crop, feats, labels = settings.crop_size, [], []
    for x, label in tqdm(_loader(_Prepared(train_set, backbone, crop, True), settings),
                         desc="seg: features of training crops", total=len(train_set)):
        for y1, y2, x1, x2 in sliding_windows(*x.shape[-2:], crop, settings.stride):
            cx, cl = pad_crop(x[:, y1:y2, x1:x2], label[y1:y2, x1:x2], crop)
            with autocast(settings.device):
                maps = backbone_feature_maps(backbone, cx[None].to(settings.device), settings.layers)
            feats.append(torch.cat(maps, 1)[0].half().cpu())
            labels.append(cl.to(torch.uint8))
    return torch.stack(feats), torch.stack(labels)


def _cache_bytes(backbone: Backbone, train_set, settings: SegmentationSettings) -> float:
    """Rough size of the cached features, assuming ~2 crops per image (ADE aspect ratios)."""
    grid = math.ceil(settings.crop_size / backbone.patch_size)
    return len(train_set) * 2 * settings.layers * backbone.embed_dim * grid * grid * 2


def _online_batch(backbone: Backbone, train_set, settings: SegmentationSettings, rng: random.Random,
                  batch_size: int):
    """Random resize (0.5-2x of the protocol size), random crop and flip: mmseg's train pipeline
    without photometric distortion."""
    crop, xs, ls = settings.crop_size, [], []
    for i in rng.sample(range(len(train_set)), min(batch_size, len(train_set))):
        image, label = train_set[i]
        h, w = protocol_size(*image.shape[:2], crop)
        ratio = rng.uniform(0.5, 2.0)
        size = (max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1))
        x = normalize(resize_image(image, size), backbone.mean, backbone.std)
        lab = torch.from_numpy(resize_label(label, size))
        y1, x1 = rng.randint(0, max(size[0] - crop, 0)), rng.randint(0, max(size[1] - crop, 0))
        x, lab = pad_crop(x[:, y1:y1 + crop, x1:x1 + crop], lab[y1:y1 + crop, x1:x1 + crop], crop)
        if rng.random() < 0.5:
            x, lab = x.flip(-1), lab.flip(-1)
        xs.append(x)
        ls.append(lab)
    with autocast(settings.device):
        maps = backbone_feature_maps(backbone, torch.stack(xs).to(settings.device), settings.layers)
    return torch.cat(maps, 1).float(), torch.stack(ls)


def lr_factor(step: int, settings: SegmentationSettings) -> float:
    """Linear warmup then poly(power=1) decay to 0: mmseg's LinearLR + PolyLR pair."""
    warmup = settings.effective_warmup()
    if step < warmup:
        return 1e-6 + (1 - 1e-6) * step / warmup
    return max(1 - (step - warmup) / max(settings.iters - warmup, 1), 0.0)


def train_linear_head(backbone: Backbone, train_set, settings: SegmentationSettings) -> tuple[LinearSegmentationHead, dict]:
    """Train the head on frozen features; returns the head and how training data was fed.

    Under torchrun each rank feeds ``batch_size / ranks`` crops of its own share of the
    images to a DDP head; with ``work_dir`` set, training resumes from its checkpoint."""
    world = current_world()
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed + world.rank)
    backbone.to(settings.device).eval()
    head = LinearSegmentationHead(backbone.embed_dim * settings.layers, train_set.num_classes).to(settings.device)
    model = data_parallel(head, world, settings.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    per_rank = max(settings.batch_size // world.size, 1)
    local_set = torch.utils.data.Subset(train_set, shard(range(len(train_set)), world)) if world.size > 1 else train_set

    cached = _cache_bytes(backbone, train_set, settings) <= settings.max_cache_gb * 2**30
    generator = torch.Generator().manual_seed(settings.seed + world.rank)
    if cached:
        bank_feats, bank_labels = _train_crops(backbone, local_set, settings)
    checkpoint = HeadCheckpoint(settings.work_dir, settings.checkpoint_every, world)
    start = checkpoint.restore(model, optimizer, scheduler, generator, rng) if settings.resume else 0
    model.train()
    progress = tqdm(range(start, settings.iters), desc="seg: training linear head", disable=not world.is_main,
                    initial=start, total=settings.iters)
    for step in progress:
        if cached:
            idx = torch.randint(len(bank_feats), (per_rank,), generator=generator)
            feats, labels = bank_feats[idx].float().to(settings.device), bank_labels[idx].long().to(settings.device)
        else:
            feats, labels = _online_batch(backbone, local_set, settings, rng, per_rank)
            labels = labels.long().to(settings.device)
        with autocast(settings.device):
            logits = model([feats])
        logits = upsample_logits(logits.float(), labels.shape[-2:], backbone.patch_size)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss) and world.size > 1:
            # An all-ignore batch has no gradient, but under DDP every rank must join the
            # gradient all-reduce: a zero loss on the same graph does that.
            loss = logits.sum() * 0.0
        if torch.isfinite(loss):  # one process skips an all-ignore batch's step altogether
            loss.backward()
            optimizer.step()
        scheduler.step()
        checkpoint.maybe_save(step + 1, settings.iters, model, optimizer, scheduler, generator, rng)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    head.eval()
    feeding = ({"train_features": "cached once per fixed sliding-window crop", "train_augmentation": "none",
                "train_crops": int(len(bank_feats)) * world.size} if cached else
               {"train_features": "online", "train_augmentation": "random resize 0.5-2x, random crop, h-flip"})
    return head, {**feeding, "train_ranks": world.size, "train_resumed_from_step": start}


# ----------------------------------------------------------------------------- inference

@torch.no_grad()
def slide_logits(backbone: Backbone, head: LinearSegmentationHead, x: torch.Tensor,
                 settings: SegmentationSettings) -> torch.Tensor:
    """(K, H, W) logits of one normalised image, averaged over overlapping windows."""
    h, w = x.shape[-2:]
    windows = sliding_windows(h, w, settings.crop_size, settings.stride)
    logits = x.new_zeros(head.num_classes, h, w)
    count = x.new_zeros(1, h, w)
    for start in range(0, len(windows), settings.batch_size):
        chunk = windows[start:start + settings.batch_size]
        crops = torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        out = upsample_logits(head(backbone_feature_maps(backbone, crops, settings.layers)),
                              crops.shape[-2:], backbone.patch_size)
        for (y1, y2, x1, x2), o in zip(chunk, out):
            logits[:, y1:y2, x1:x2] += o
            count[:, y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def evaluate_linear_head(backbone: Backbone, head: LinearSegmentationHead, val_set,
                         settings: SegmentationSettings) -> dict:
    backbone.to(settings.device).eval()
    head.to(settings.device).eval()
    world = current_world()
    k = head.num_classes
    confusion = torch.zeros(k, k, dtype=torch.int64)
    local = torch.utils.data.Subset(val_set, shard(range(len(val_set)), world)) if world.size > 1 else val_set
    for x, label in tqdm(_loader(_Prepared(local, backbone, settings.crop_size, False), settings),
                         desc="seg: sliding-window evaluation", total=len(local), disable=not world.is_main):
        with autocast(settings.device):
            logits = slide_logits(backbone, head, x.to(settings.device), settings).float()
        logits = F.interpolate(logits[None], size=label.shape, mode="bilinear", align_corners=False)[0]
        update_confusion(confusion, logits.argmax(0).cpu(), label)
    return segmentation_metrics(all_reduce_sum(confusion, world, settings.device), val_set.classes)


def run_torch_segmentation(backbone: Backbone, train_set, val_set, settings: SegmentationSettings,
                           head: Optional[LinearSegmentationHead] = None) -> tuple[dict, LinearSegmentationHead]:
    """Train (unless a head is given) and evaluate; returns (metrics, head)."""
    if train_set.classes != val_set.classes:
        raise ValueError("training and validation splits list different classes")
    feeding = {}
    if head is None:
        head, feeding = train_linear_head(backbone, train_set, settings)
    metrics = evaluate_linear_head(backbone, head, val_set, settings)
    metrics["engine_settings"] = {**asdict(settings), **feeding}
    return metrics, head
