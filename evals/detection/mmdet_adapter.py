"""COCO Mask R-CNN through MMDetection on a frozen backbone.

Registers into mmdet's MODELS (nothing of mmdet is forked): ``FrozenBackbone`` (the project
Backbone, frozen at build time) and ``SimpleFPNNeck`` (ViTDet's simple feature pyramid from
``simple_fpn.py``; mmdet's ``projects/ViTDet`` is not in the wheel). The rest is stock mmdet:
MaskRCNN with its standard R50-FPN heads, CocoDataset with the classes of the annotation
file, CocoMetric for bbox + segm, an mmengine Runner, config as a Python dict.

Schedule: the 1x recipe (SGD 0.02 per 16 images, momentum 0.9, wd 1e-4, 500 warmup iters,
x0.1 at epochs 8 and 11 of 12), laid out in iterations so ``max_iters`` can shorten it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from evals.mm_runtime import (
    INSTALL_HINT,
    FrozenBackbone,
    mmengine_checkpoint_globals,
    optim_wrapper,
    register_module_once,
    runner_defaults,
    unique_experiment_name,
    work_dir_or_temp,
)

try:
    from mmengine.config import ConfigDict
    from mmengine.model import BaseModule
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmdet.registry import MODELS
except ImportError as e:
    raise ImportError(f"{e}. The mmdet engine needs mmcv (with ops) and mmdet: {INSTALL_HINT}.") from e

from evals.backbones.base import Backbone
from evals.datasets.coco import COCOInstances
from evals.distributed import current_world
from evals.detection.simple_fpn import STRIDES, SimpleFeaturePyramid
from evals.detection.torchvision_engine import AP_NAMES, DetectionSettings


class SimpleFPNNeck(BaseModule):
    """mmdet neck around :class:`SimpleFeaturePyramid`: uses the last backbone map and returns
    five levels (strides 4..64), what the standard RPN and RoI heads expect."""

    def __init__(self, in_channels: int, patch_size: int, out_channels: int = 256, init_cfg=None):
        super().__init__(init_cfg)
        self.pyramid = SimpleFeaturePyramid(in_channels, patch_size, out_channels)

    def forward(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self.pyramid(inputs[-1]))


register_module_once(MODELS, FrozenBackbone)
register_module_once(MODELS, SimpleFPNNeck)


def mask_rcnn_config(backbone_cfg: dict, embed_dim: int, patch_size: int, mean, std, num_classes: int,
                     channels: int = 256, detections_per_image: int = 100, rois_per_image: int = 512) -> dict:
    """mmdet's mask-rcnn_r50_fpn_1x_coco model with our backbone and neck."""
    strides = list(STRIDES)

    def roi_extractor(size):
        return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                    out_channels=channels, featmap_strides=strides)

    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[m * 255 for m in mean], std=[s * 255 for s in std],
                               bgr_to_rgb=True, pad_mask=True, pad_size_divisor=32),
        backbone=dict(type="FrozenBackbone", layers=1, **backbone_cfg),
        neck=dict(type="SimpleFPNNeck", in_channels=embed_dim, patch_size=patch_size, out_channels=channels),
        rpn_head=dict(
            type="RPNHead", in_channels=channels, feat_channels=channels,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=strides + [64]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=roi_extractor(7),
            bbox_head=dict(
                type="Shared2FCBBoxHead", in_channels=channels, fc_out_channels=1024, roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=roi_extractor(14),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=channels, conv_out_channels=channels,
                           num_classes=num_classes,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                              match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
                allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(
                assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                              match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(type="RandomSampler", num=rois_per_image, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=detections_per_image,
                      mask_thr_binary=0.5)),
    )


def build_model(config: dict):
    """Build here rather than in the Runner, so an injected backbone object is used, not copied.
    mm models read their configs by attribute (train_cfg.rpn): hence ConfigDict. The scope keeps
    nested builds in mmdet's registries even after an mmseg runner ran in this process."""
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(ConfigDict(config))


def dataset_config(dataset: COCOInstances, ann_file: Path, settings: DetectionSettings, train: bool) -> dict:
    scale = (settings.max_size, settings.min_size)
    if train:
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
            dict(type="Resize", scale=scale, keep_ratio=True),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PackDetInputs"),
        ]
    else:
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=scale, keep_ratio=True),
            dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
        ]
    cfg = dict(
        # absolute: mmengine joins a relative ann_file onto data_root (a relative --data doubled)
        type="CocoDataset", data_root=str(dataset.img_dir.parent.resolve()), ann_file=str(Path(ann_file).resolve()),
        data_prefix=dict(img=f"{dataset.img_dir.name}/"),
        metainfo=dict(classes=tuple(dataset.classes)),
        filter_cfg=dict(filter_empty_gt=True, min_size=32) if train else None,
        test_mode=not train, pipeline=pipeline,
    )
    return cfg


def dataset_annotations(dataset: COCOInstances, work_dir: Path, name: str) -> Path:
    """The annotation file mmdet should read: the original, or for --max-*-images a copy
    restricted to the reader's images, so CocoMetric scores exactly the evaluated images."""
    if len(dataset) == len(dataset.coco.getImgIds()):
        return dataset.ann_file
    return dataset.write_subset(work_dir / f"instances_{name}_subset.json")


def build_runner(backbone: Backbone, train_set: COCOInstances, val_set: COCOInstances, settings: DetectionSettings,
                 work_dir: str) -> tuple[Runner, dict]:
    train_ann, val_ann = (dataset_annotations(d, Path(work_dir), name)
                          for d, name in ((train_set, "train"), (val_set, "val")))
    model = build_model(mask_rcnn_config(dict(backbone=backbone), backbone.embed_dim, backbone.patch_size,
                                         backbone.mean, backbone.std, train_set.num_classes,
                                         settings.pyramid_channels, settings.detections_per_image,
                                         settings.rois_per_image))
    iters_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    total = settings.total_iters(iters_per_epoch)
    warmup = min(settings.warmup_iters, max(total // 4, 1))
    milestones = [math.floor(total * f) for f in (8 / 12, 11 / 12)]
    loader = dict(num_workers=settings.num_workers, persistent_workers=settings.num_workers > 0)
    runner = Runner(
        model=model.to(settings.device),
        # settings.batch_size is per iteration; mmengine's is per rank
        train_dataloader=dict(batch_size=max(settings.batch_size // current_world().size, 1), sampler=dict(type="InfiniteSampler", shuffle=True),
                              batch_sampler=dict(type="AspectRatioBatchSampler"),
                              dataset=dataset_config(train_set, train_ann, settings, True), **loader),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=total, val_interval=total + 1),
        optim_wrapper=optim_wrapper(dict(type="SGD", lr=settings.base_lr(), momentum=0.9,
                                         weight_decay=settings.weight_decay), settings.device),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup),
            dict(type="MultiStepLR", by_epoch=False, begin=0, end=total, milestones=milestones, gamma=0.1),
        ],
        test_dataloader=dict(batch_size=1, sampler=dict(type="DefaultSampler", shuffle=False),
                             dataset=dataset_config(val_set, val_ann, settings, False), drop_last=False, **loader),
        test_cfg=dict(type="TestLoop"),
        test_evaluator=dict(type="CocoMetric", ann_file=str(val_ann), metric=["bbox", "segm"],
                            format_only=False),
        default_scope="mmdet",
        experiment_name=unique_experiment_name("coco_mask_rcnn"),
        # find_unused: the mask head gets no gradient on a batch without positive RoIs
        **runner_defaults(work_dir, total, settings.seed, log_interval=min(50, total), save_checkpoint=True,
                          device=settings.device, checkpoint_every=settings.checkpoint_every,
                          resume=settings.resume, find_unused=True),
    )
    return runner, {"iters": total, "iters_per_epoch": iters_per_epoch, "warmup_iters": warmup,
                    "lr_milestones": milestones}


_MMDET_KEYS = dict(zip(AP_NAMES, ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")))


def run_mmdet_detection(backbone: Backbone, train_set: COCOInstances, val_set: COCOInstances,
                        settings: DetectionSettings, work_dir: Optional[str] = None) -> dict:
    """Train Mask R-CNN with mmdet and evaluate; AP numbers in percent (as the torchvision engine)."""
    if train_set.classes != val_set.classes:
        raise ValueError("train and val annotation files define different categories")
    with work_dir_or_temp(work_dir) as wd, mmengine_checkpoint_globals():
        runner, schedule = build_runner(backbone, train_set, val_set, settings, wd)
        runner.train()
        raw = runner.test()
    metrics = {}
    for task in ("bbox", "segm"):
        for name, key in _MMDET_KEYS.items():
            v = raw.get(f"coco/{task}_{key}")
            # CocoMetric leaves keys out when nothing was detected, and writes -1 for size
            # ranges without ground truth.
            metrics[f"{task}_{name}"] = 0.0 if v is None else (None if v < 0 else float(v) * 100)
    metrics["engine_settings"] = {**schedule, "lr": settings.base_lr(), "work_dir": work_dir}
    return metrics

