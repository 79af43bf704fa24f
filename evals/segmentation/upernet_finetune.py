"""ADE20k fine-tuning with UperNet through MMSegmentation (the paper's "ADE20k fine-tuned").

Registered into mmseg's MODELS (nothing of mmseg is forked): ``TrainableBackbone``, the
project Backbone with its weights trainable, returning four block outputs spread evenly
over its depth as (B, C, h, w) maps. The rest is stock mmseg: ``MultiLevelNeck`` (ViT maps
rescaled x4, x2, x1, x0.5 into a pyramid), ``UPerHead`` with an ``FCNHead`` auxiliary
head, EncoderDecoder with slide inference, mmseg's ADE20k pipelines, AdamW with the
backbone at a tenth of the head's learning rate, warmup + poly, under an mmengine Runner
(torchrun: ``launcher='pytorch'``; bf16 AMP on GPU; resumable). The usual recipe:
160k iterations, batch 16, 512 crops, lr 1e-4, weight decay 0.05.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from evals.backbones.base import Backbone, BackboneSpec, build_backbone
from evals.datasets.ade20k import ADE20kSegmentation
from evals.mm_runtime import mmengine_checkpoint_globals, register_module_once, work_dir_or_temp
from evals.segmentation.linear_head import pad_to_patch_multiple
from evals.segmentation.mmseg_adapter import build_model, build_runner
from evals.segmentation.torch_engine import SegmentationSettings

BACKBONE_LR_MULT = 0.1
NUM_LEVELS = 4


def spread_blocks(depth: int, levels: int = NUM_LEVELS) -> list[int]:
    """Block indices (0-based) spread evenly, the last block last: 12 -> [2, 5, 8, 11]
    (a model shallower than ``levels`` repeats blocks: 2 -> [0, 0, 0, 1])."""
    return [max(depth * (i + 1) // levels - 1, 0) for i in range(levels)]


class TrainableBackbone(BaseModule):
    """A project :class:`Backbone` whose weights train; outputs the maps of ``blocks``
    (default: spread over the depth), oldest first."""

    def __init__(self, spec: Optional[dict] = None, backbone: Optional[Backbone] = None,
                 blocks: Optional[list[int]] = None, init_cfg=None):
        super().__init__(init_cfg)
        if (spec is None) == (backbone is None):
            raise ValueError("TrainableBackbone: give exactly one of spec=dict(name=..., weights=...) or backbone=")
        self.backbone = backbone if backbone is not None else build_backbone(BackboneSpec(**spec))
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        depth = self.backbone.protocol_info().get("depth")
        if depth is None:
            raise ValueError(f"{type(self.backbone).__name__}: its protocol_info() gives no 'depth'; "
                             "TrainableBackbone needs it to pick blocks")
        self.depth = int(depth)
        self.blocks = list(blocks) if blocks is not None else spread_blocks(self.depth)

    def init_weights(self) -> None:
        pass  # pretrained: mm's recursive init must not re-initialise it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = pad_to_patch_multiple(x, self.backbone.patch_size)
        first = min(self.blocks)
        # forward_intermediates(n) returns the last n blocks: enough to reach the first wanted one.
        maps = self.backbone.forward_intermediates(x, self.depth - first)
        return [maps[b - first].permute(0, 3, 1, 2).contiguous() for b in self.blocks]


register_module_once(MODELS, TrainableBackbone)


def upernet_config(backbone: Backbone, num_classes: int, settings: SegmentationSettings, channels: int = 512,
                   norm: str = "BN") -> dict:
    c, s, dim = settings.crop_size, settings.stride, backbone.embed_dim
    norm_cfg = dict(type=norm, requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[m * 255 for m in backbone.mean],
                               std=[v * 255 for v in backbone.std], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
                               size=(c, c)),
        backbone=dict(type="TrainableBackbone", backbone=backbone),
        neck=dict(type="MultiLevelNeck", in_channels=[dim] * NUM_LEVELS, out_channels=dim, scales=[4, 2, 1, 0.5]),
        decode_head=dict(type="UPerHead", in_channels=[dim] * NUM_LEVELS, in_index=list(range(NUM_LEVELS)),
                         pool_scales=(1, 2, 3, 6), channels=channels, dropout_ratio=0.1, num_classes=num_classes,
                         norm_cfg=norm_cfg, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                          avg_non_ignore=True)),
        auxiliary_head=dict(type="FCNHead", in_channels=dim, in_index=2, channels=max(channels // 2, 8), num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4,
                                             avg_non_ignore=True)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(c, c), stride=(s, s)),
    )


def finetune_optimizer(settings: SegmentationSettings) -> dict:
    return dict(
        optimizer=dict(type="AdamW", lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay),
        # No weight decay on norms and position tables; the pretrained backbone moves slower.
        paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
            "backbone": dict(lr_mult=BACKBONE_LR_MULT), "pos_embed": dict(decay_mult=0.0)}),
    )


def run_upernet_finetune(backbone: Backbone, train_set: ADE20kSegmentation, val_set: ADE20kSegmentation,
                         settings: SegmentationSettings, channels: int = 512, work_dir: Optional[str] = None) -> dict:
    """Fine-tune backbone + UperNet with mmseg and evaluate; mIoU / aAcc / mAcc in percent."""
    from evals.distributed import current_world

    multi_gpu = current_world().size > 1 and torch.device(settings.device).type == "cuda"
    model = build_model(upernet_config(backbone, val_set.num_classes, settings, channels,
                                       norm="SyncBN" if multi_gpu else "BN"))
    with work_dir_or_temp(work_dir) as wd, mmengine_checkpoint_globals():
        runner = build_runner(backbone, train_set, val_set, settings, wd, model=model,
                              optimizer=finetune_optimizer(settings), task="ade20k_upernet_ft")
        runner.train()
        raw = runner.test()
    blocks = TrainableBackbone(backbone=backbone).blocks
    return {
        "mIoU": float(raw["mIoU"]), "aAcc": float(raw["aAcc"]), "mAcc": float(raw["mAcc"]),
        "engine_settings": {
            "model": "UperNet (mmseg UPerHead + FCNHead aux 0.4) on MultiLevelNeck x4/x2/x1/x0.5",
            "backbone_blocks": blocks, "backbone_lr_mult": BACKBONE_LR_MULT, "decode_channels": channels,
            "train_augmentation": "mmseg ADE20k: random resize 0.5-2x, random crop (cat_max_ratio 0.75), "
                                  "h-flip, photometric distortion",
            "work_dir": work_dir,
        },
    }
