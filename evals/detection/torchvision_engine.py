"""COCO detection without the mm stack: torchvision's Mask R-CNN on a frozen backbone.

The frozen backbone + simple feature pyramid form torchvision's detection backbone (it needs
an ``out_channels`` attribute and an ordered dict of maps named '0'..'3', 'pool', which
torchvision's default anchor generator and RoI poolers expect). Schedule: SGD, momentum 0.9,
lr 0.02 per 16 images, linear warmup, x0.1 at 8/12 and 11/12 of training (the 1x schedule
when run for 12 epochs). Box and mask AP from pycocotools' COCOeval.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from evals.backbones.base import Backbone
from evals.datasets.coco import COCOInstances
from evals.detection.simple_fpn import SimpleFeaturePyramid
from evals.distributed import current_world, shard
from evals.head_training import HeadCheckpoint, autocast, data_parallel
from evals.segmentation.linear_head import pad_to_patch_multiple

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class DetectionSettings:
    epochs: int = 12
    max_iters: Optional[int] = None  # stop early (tests); the schedule is laid out over this many
    batch_size: int = 2
    lr: Optional[float] = None  # default 0.02 * batch_size / 16
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    min_size: int = 800  # short side of the resized image
    max_size: int = 1333
    pyramid_channels: int = 256
    rois_per_image: int = 512  # RoIs sampled per image for the box and mask heads (mmdet's 1x: 512)
    detections_per_image: int = 100  # COCO's maxDets
    device: str = "cpu"
    num_workers: int = 0
    seed: int = 0
    work_dir: Optional[str] = None  # training state saved here every checkpoint_every iterations
    checkpoint_every: int = 1000
    resume: bool = False  # continue from work_dir's checkpoint

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.02 * self.batch_size / 16

    def total_iters(self, iters_per_epoch: int) -> int:
        full = self.epochs * iters_per_epoch
        return min(full, self.max_iters) if self.max_iters else full


class FrozenViTPyramid(torch.nn.Module):
    """Frozen backbone + trainable simple feature pyramid, as a torchvision detection backbone."""

    def __init__(self, backbone: Backbone, out_channels: int = 256):
        super().__init__()
        self.backbone = backbone.freeze()
        self.pyramid = SimpleFeaturePyramid(backbone.embed_dim, backbone.patch_size, out_channels)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        with torch.no_grad():
            x = pad_to_patch_multiple(images, self.backbone.patch_size)
            tokens = self.backbone.forward_patches(x).permute(0, 3, 1, 2).contiguous()
        names = [str(i) for i in range(len(self.pyramid.strides) - 1)] + ["pool"]
        return OrderedDict(zip(names, self.pyramid(tokens)))


def build_mask_rcnn(backbone: Backbone, num_classes: int, settings: DetectionSettings):
    from torchvision.models.detection import MaskRCNN

    return MaskRCNN(
        FrozenViTPyramid(backbone, settings.pyramid_channels),
        num_classes=num_classes + 1,  # torchvision counts the background class
        min_size=settings.min_size, max_size=settings.max_size,
        image_mean=list(backbone.mean), image_std=list(backbone.std),
        box_detections_per_img=settings.detections_per_image,
        box_batch_size_per_image=settings.rois_per_image,
    )


def _to_torchvision(image: np.ndarray, target: dict, flip: bool = False):
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255)
    keep = torch.from_numpy(target["iscrowd"] == 0)
    boxes = torch.from_numpy(target["boxes"])[keep]
    masks = torch.from_numpy(target["masks"])[keep]
    if flip:
        x, masks = x.flip(-1), masks.flip(-1)
        w = x.shape[-1]
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return x, {"boxes": boxes, "labels": torch.from_numpy(target["labels"])[keep] + 1, "masks": masks}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup from 0.001, then x0.1 at 8/12 and 11/12 of training (mmdet's 1x)."""
    warm = 0.001 + (1 - 0.001) * step / warmup if step < warmup else 1.0
    return warm * (0.1 ** sum(step >= math.floor(total * f) for f in (8 / 12, 11 / 12)))


@functools.lru_cache(maxsize=2)
def _permutation(items: tuple, seed: int, epoch: int) -> list:
    return random.Random(f"{seed}-{epoch}").sample(items, len(items))


def epoch_order(items: list, seed: int, position: int):
    """The ``position``-th image drawn: epochs of seeded permutations, a pure function of the
    position, so a resumed run draws what the uninterrupted one would have."""
    epoch, k = divmod(position, len(items))
    return _permutation(tuple(items), seed, epoch)[k]


def train_mask_rcnn(model, train_set: COCOInstances, settings: DetectionSettings) -> dict:
    """SGD on everything but the frozen backbone. Under torchrun: DDP, each rank drawing
    ``batch_size / ranks`` images of its own share; resumable from ``work_dir``."""
    world = current_world()
    rng = random.Random(settings.seed + world.rank)
    iters_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    total = settings.total_iters(iters_per_epoch)
    warmup = min(settings.warmup_iters, max(total // 4, 1))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.base_lr(), momentum=0.9, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    ddp = data_parallel(model, world, settings.device, find_unused=True)
    checkpoint = HeadCheckpoint(settings.work_dir, settings.checkpoint_every, world, frozen_prefix="backbone.backbone.")
    start = checkpoint.restore(ddp, optimizer, scheduler, None, rng) if settings.resume else 0
    local = shard(range(len(train_set)), world)
    per_rank = max(settings.batch_size // world.size, 1)
    ddp.train()
    progress = tqdm(range(start, total), desc="det: training Mask R-CNN (torchvision)", disable=not world.is_main,
                    initial=start, total=total)
    for step in progress:
        picks = [epoch_order(local, settings.seed, pos) for pos in range(step * per_rank, (step + 1) * per_rank)]
        batch = [_to_torchvision(*train_set[i], flip=rng.random() < 0.5) for i in picks]
        images = [x.to(settings.device) for x, _ in batch]
        targets = [{k: v.to(settings.device) for k, v in t.items()} for _, t in batch]
        with autocast(settings.device):
            losses = ddp(images, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        checkpoint.maybe_save(step + 1, total, ddp, optimizer, scheduler, None, rng)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return {"iters": total, "iters_per_epoch": iters_per_epoch, "warmup_iters": warmup, "train_ranks": world.size,
            "resumed_from_step": start}


@torch.no_grad()
def predict_coco_results(model, val_set: COCOInstances, settings: DetectionSettings) -> tuple[list, list]:
    """Detections in COCO result format: (bbox results, segm results with RLE masks)."""
    from pycocotools import mask as mask_utils

    model.eval()
    world = current_world()
    boxes_out, segms_out = [], []
    for i in tqdm(shard(range(len(val_set)), world), desc="det: inference", disable=not world.is_main):
        image, target = val_set[i]
        x, _ = _to_torchvision(image, target)
        with autocast(settings.device):
            pred = model([x.to(settings.device)])[0]
        pred = {k: v.float() if v.is_floating_point() else v for k, v in pred.items()}
        masks = (pred["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        for box, label, score, mask in zip(pred["boxes"].tolist(), pred["labels"].tolist(),
                                           pred["scores"].tolist(), masks):
            common = {"image_id": target["image_id"], "category_id": val_set.category_ids[label - 1], "score": score}
            boxes_out.append({**common, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            segms_out.append({**common, "segmentation": rle})
    return boxes_out, segms_out


def coco_ap(coco_gt, results: list, iou_type: str, image_ids: list[int]) -> dict:
    """AP numbers (percent) from COCOeval; all zero when there is no detection at all."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # COCO.loadRes cannot load an empty list
        return {name: 0.0 for name in AP_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 marks "no ground truth in this size range": report it as missing, not as a score.
    return {name: (float(v) * 100 if v >= 0 else None) for name, v in zip(AP_NAMES, evaluator.stats[:6])}


def evaluate_mask_rcnn(model, val_set: COCOInstances, settings: DetectionSettings) -> dict:
    boxes, segms = predict_coco_results(model, val_set, settings)
    world = current_world()
    if world.size > 1:  # each rank predicted its share; every rank scores the union
        gathered = [None] * world.size
        torch.distributed.all_gather_object(gathered, (boxes, segms))
        boxes, segms = [b for part, _ in gathered for b in part], [s for _, part in gathered for s in part]
    bbox, segm = coco_ap(val_set.coco, boxes, "bbox", val_set.image_ids), coco_ap(val_set.coco, segms, "segm", val_set.image_ids)
    metrics = {f"bbox_{k}": v for k, v in bbox.items()}
    metrics.update({f"segm_{k}": v for k, v in segm.items()})
    metrics["detections"] = len(boxes)
    return metrics


def run_torchvision_detection(backbone: Backbone, train_set: COCOInstances, val_set: COCOInstances,
                              settings: DetectionSettings) -> dict:
    if train_set.classes != val_set.classes:
        raise ValueError("train and val annotation files define different categories")
    torch.manual_seed(settings.seed)
    model = build_mask_rcnn(backbone, train_set.num_classes, settings).to(settings.device)
    schedule = train_mask_rcnn(model, train_set, settings)
    metrics = evaluate_mask_rcnn(model, val_set, settings)
    metrics["engine_settings"] = {**asdict(settings), **schedule, "lr": settings.base_lr()}
    return metrics
