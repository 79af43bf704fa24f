"""ADE20k linear segmentation through MMSegmentation.

Registers into mmseg's registries (nothing of mmseg is forked):
  MODELS    ``FrozenBackbone``  a project Backbone, frozen at build time
  MODELS    ``LinearBNHead``    BN + 1x1 conv decode head (mmseg 1.2.2 has no linear head)
  DATASETS  ``ADE20KTreeDataset`` mmseg's ADE20KDataset for trees with their own class list
  METRICS   ``IoUMetricPerClass`` mmseg's IoUMetric that also returns per-class IoU
and runs mmseg's EncoderDecoder with slide inference under an mmengine Runner, with the
config built as a Python dict. The head shares ``linear_head.py`` with the torch engine
(same parameter names, same logits upsampling), so the two engines are interchangeable.
"""
from __future__ import annotations

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
    from mmcv.cnn import build_norm_layer
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmseg.datasets import ADE20KDataset
    from mmseg.evaluation import IoUMetric
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    from mmseg.registry import DATASETS, METRICS, MODELS
except ImportError as e:
    raise ImportError(f"{e}. The mmseg engine needs mmcv (with ops) and mmsegmentation: {INSTALL_HINT}.") from e

from evals.backbones.base import Backbone
from evals.datasets.ade20k import ADE20kSegmentation, class_palette
from evals.distributed import current_world
from evals.segmentation.linear_head import LinearSegmentationHead, upsample_logits
from evals.segmentation.torch_engine import SegmentationSettings


class LinearBNHead(BaseDecodeHead):
    """BatchNorm + 1x1 conv on (concatenated) patch-token maps.

    ``patch_size`` lets the logits be upsampled to the padded image the tokens came from and
    then cropped (see ``upsample_logits``), for crops that are not a patch multiple.
    """

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.bn = build_norm_layer(self.norm_cfg or dict(type="BN"), self.in_channels)[1]

    def forward(self, inputs):
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))

    def predict_by_feat(self, seg_logits: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        meta = batch_img_metas[0]
        # Same size choice as BaseDecodeHead.predict_by_feat (slide inference sets img_shape).
        size = meta["img_shape"] if isinstance(meta["img_shape"], torch.Size) else meta.get("pad_shape", meta["img_shape"])
        return upsample_logits(seg_logits, size[:2], self.patch_size)

    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples) -> dict:
        size = batch_data_samples[0].gt_sem_seg.data.shape[-2:]
        # Already at label size, so the parent's own resize is the identity.
        return super().loss_by_feat(upsample_logits(seg_logits, size, self.patch_size), batch_data_samples)


class ADE20KTreeDataset(ADE20KDataset):
    """ADE20KDataset whose ``metainfo.classes`` may be any list: labels in the tree are
    already indices into it, so mmseg's subset remapping (which rejects unknown names) is off."""

    @classmethod
    def get_label_map(cls, new_classes=None):
        return None


class IoUMetricPerClass(IoUMetric):
    """IoUMetric that also returns ``IoU.<class>`` (percent; nan when a class never occurs)."""

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        intersect, union = sum(r[0] for r in results), sum(r[1] for r in results)
        for name, iou in zip(self.dataset_meta["classes"], (intersect / union).tolist()):
            metrics[f"IoU.{name}"] = iou * 100
        return metrics


register_module_once(MODELS, FrozenBackbone)
register_module_once(MODELS, LinearBNHead)
register_module_once(DATASETS, ADE20KTreeDataset)
register_module_once(METRICS, IoUMetricPerClass)


def model_config(backbone_cfg: dict, embed_dim: int, patch_size: int, mean, std, num_classes: int,
                 settings: SegmentationSettings, norm: str = "BN") -> dict:
    """EncoderDecoder config. ``norm='SyncBN'`` for multi-GPU runs."""
    c, s = settings.crop_size, settings.stride
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor", mean=[m * 255 for m in mean], std=[v * 255 for v in std],
            bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(c, c),
        ),
        backbone=dict(type="FrozenBackbone", layers=settings.layers, **backbone_cfg),
        decode_head=dict(
            type="LinearBNHead", patch_size=patch_size,
            in_channels=[embed_dim] * settings.layers, in_index=list(range(settings.layers)),
            input_transform="resize_concat", channels=embed_dim * settings.layers,
            num_classes=num_classes, dropout_ratio=0, norm_cfg=dict(type=norm, requires_grad=True),
            align_corners=False,
            # Mean over non-ignored pixels, as F.cross_entropy(ignore_index=...) in the torch engine.
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(c, c), stride=(s, s)),
    )


def dataset_config(dataset: ADE20kSegmentation, settings: SegmentationSettings, train: bool) -> dict:
    c = settings.crop_size
    reduce = dataset.reduce_zero_label
    if train:  # mmseg's standard ADE20k training pipeline
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
            dict(type="RandomResize", scale=(4 * c, c), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type="RandomCrop", crop_size=(c, c), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs"),
        ]
    else:
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(4 * c, c), keep_ratio=True),
            dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
            dict(type="PackSegInputs"),
        ]
    img_suffix = dataset.images[0].suffix
    cfg = dict(
        type="ADE20KTreeDataset", data_root=str(dataset.data_root), img_suffix=img_suffix,
        data_prefix=dict(img_path=f"images/{dataset.split}", seg_map_path=f"annotations/{dataset.split}"),
        metainfo=dict(classes=tuple(dataset.classes), palette=class_palette(dataset.num_classes)),
        reduce_zero_label=reduce, pipeline=pipeline,
    )
    # mmseg lists the same files in the same (sorted) order, so --max-*-images maps to indices.
    cfg["indices"] = len(dataset)
    return cfg


def build_model(config: dict):
    """Built here rather than by the Runner, so an injected backbone object is used, not copied.
    mm models read their configs by attribute (test_cfg.mode): hence ConfigDict. The scope
    keeps nested builds in mmseg's registries even after an mmdet runner ran in this process."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(ConfigDict(config))


def build_runner(backbone: Backbone, train_set: Optional[ADE20kSegmentation], val_set: ADE20kSegmentation,
                 settings: SegmentationSettings, work_dir: str, load_from: Optional[str] = None,
                 model=None, optimizer: Optional[dict] = None, task: str = "ade20k_linear") -> Runner:
    """A Runner for the linear head, or for ``model`` with ``optimizer`` (fine-tuning)."""
    if model is None:
        model = build_model(model_config(dict(backbone=backbone), backbone.embed_dim, backbone.patch_size,
                                         backbone.mean, backbone.std, val_set.num_classes, settings,
                                         norm="SyncBN" if _multi_gpu(settings) else "BN"))
    optimizer = optimizer or dict(optimizer=dict(type="AdamW", lr=settings.lr, betas=(0.9, 0.999),
                                                 weight_decay=settings.weight_decay))
    iters = max(settings.iters, 1)
    warmup = settings.effective_warmup()
    kwargs = runner_defaults(work_dir, iters, settings.seed, log_interval=min(50, iters),
                             save_checkpoint=train_set is not None, device=settings.device,
                             checkpoint_every=settings.checkpoint_every, resume=settings.resume and train_set is not None)
    if train_set is not None:
        kwargs.update(
            train_dataloader=dict(
                # settings.batch_size is per iteration; mmengine's is per rank
                batch_size=max(settings.batch_size // current_world().size, 1), num_workers=settings.num_workers,
                persistent_workers=settings.num_workers > 0,
                sampler=dict(type="InfiniteSampler", shuffle=True), dataset=dataset_config(train_set, settings, True),
            ),
            train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1),
            optim_wrapper=optim_wrapper(device=settings.device, **optimizer),
            param_scheduler=[
                *([dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup)] if warmup else []),
                dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=warmup, end=iters),
            ],
        )
    return Runner(
        model=model.to(settings.device),
        test_dataloader=dict(
            batch_size=1, num_workers=settings.num_workers, persistent_workers=settings.num_workers > 0,
            sampler=dict(type="DefaultSampler", shuffle=False), dataset=dataset_config(val_set, settings, False),
        ),
        test_cfg=dict(type="TestLoop"),
        test_evaluator=dict(type="IoUMetricPerClass", iou_metrics=["mIoU"]),
        load_from=load_from,
        default_scope="mmseg",
        experiment_name=unique_experiment_name(task),
        **kwargs,
    )


def _multi_gpu(settings: SegmentationSettings) -> bool:
    return current_world().size > 1 and torch.device(settings.device).type == "cuda"


def run_mmseg_segmentation(backbone: Backbone, train_set: Optional[ADE20kSegmentation], val_set: ADE20kSegmentation,
                           settings: SegmentationSettings, work_dir: Optional[str] = None,
                           head: Optional[LinearSegmentationHead] = None,
                           checkpoint: Optional[str] = None) -> dict:
    """Train the head with mmseg (unless ``head`` or ``checkpoint`` gives one) and evaluate.

    Returns mIoU / aAcc / mAcc / per_class_iou in percent, like the torch engine.
    """
    train = train_set if head is None and checkpoint is None else None
    with work_dir_or_temp(work_dir) as wd, mmengine_checkpoint_globals():
        runner = build_runner(backbone, train, val_set, settings, wd, load_from=checkpoint)
        if train is not None:
            runner.train()
        if head is not None:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model  # DDP-wrapped
            model.decode_head.load_state_dict(head.state_dict())
        raw = runner.test()
    per_class = {name: raw.get(f"IoU.{name}") for name in val_set.classes}
    return {
        "mIoU": float(raw["mIoU"]), "aAcc": float(raw["aAcc"]), "mAcc": float(raw["mAcc"]),
        "per_class_iou": {k: (None if v is None or v != v else float(v)) for k, v in per_class.items()},
        "engine_settings": {
            "train_features": "online (mmseg pipeline)" if train is not None else "none (given head)",
            "train_augmentation": "mmseg ADE20k: random resize 0.5-2x, random crop (cat_max_ratio 0.75), "
                                  "h-flip, photometric distortion" if train is not None else "none",
            "work_dir": work_dir,
        },
    }
