"""The study's segmentation heads: trained together for a stacked group, each as it would alone."""
from __future__ import annotations

import torch

from evals.longhorizon.evaluate import (SEG_SETTINGS, evaluate_encoder, evaluate_encoders, seg_labels,
                                        segmentation_mious, train_segmentation_heads)
from evals.segmentation.torch_engine import SegmentationSettings
from tcjepa.models.vit import build_encoder
from tcjepa.study.device_scenes import render_block

SETTINGS = SegmentationSettings(iters=40, batch_size=4, lr=1e-2, warmup_iters=4)


def _grids(n: int, count: int = 24) -> tuple[list[torch.Tensor], torch.Tensor]:
    scenes = render_block(0, "heldout", 0, count)
    g = torch.Generator().manual_seed(1)
    return [torch.randn(count, 16, 8, 8, generator=g) for _ in range(n)], scenes.segmentation


def test_grouped_heads_train_each_head_as_alone():
    grids, segmentation = _grids(3)
    labels = seg_labels(segmentation)
    seeds = [0, 1, 0]  # two heads of one seed on different features: the same init and minibatches
    together = train_segmentation_heads(grids, labels, 16, 8, seeds, SETTINGS)
    for g, (grid, seed) in enumerate(zip(grids, seeds)):
        alone = train_segmentation_heads([grid], labels, 16, 8, [seed], SETTINGS)
        for name, value in alone.state_dict().items():
            if value.ndim == 0:  # BatchNorm's batch counter
                assert torch.equal(value, together.state_dict()[name])
                continue
            per_head = value.shape[0]
            part = together.state_dict()[name][g * per_head:(g + 1) * per_head]
            assert torch.allclose(part, value, rtol=1e-4, atol=1e-6), name
    assert not torch.allclose(together.conv_seg.weight[:6], together.conv_seg.weight[12:])  # other features
    # mIoU of each head equals that of its head trained alone.
    mious = segmentation_mious(grids, segmentation, 16, 8, seeds, SETTINGS)
    for grid, seed, miou in zip(grids, seeds, mious):
        assert abs(miou - segmentation_mious([grid], segmentation, 16, 8, [seed], SETTINGS)[0]) < 1e-6


def test_a_group_evaluates_each_encoder_as_alone():
    scenes = render_block(0, "heldout", 0, 32)
    encoders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        encoders.append(build_encoder("vit_micro", 64, 8))
    options = {"probe_epochs": 2, "seg_settings": SETTINGS}
    rows = evaluate_encoders(encoders, scenes, [0, 1], **options)
    for encoder, seed, row in zip(encoders, (0, 1), rows):
        alone = evaluate_encoder(encoder, scenes, seed, **options)
        assert row["probe_top1"] == alone["probe_top1"]
        assert abs(row["seg_miou"] - alone["seg_miou"]) < 1e-6
    assert SEG_SETTINGS.iters == 1500  # the protocol's head: the fast settings above are for tests only
