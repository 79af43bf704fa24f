"""The MMDetection adapter: registered backbone + simple-FPN neck, Mask R-CNN end to end.

Marked ``mm``: fails (not skips) without the stack; mm modules are imported inside tests.
"""
import argparse

import pytest
import torch
from dense_helpers import coco_tree, tiny_backbone  # noqa: F401 (fixtures)

from evals.detection import protocol

pytestmark = pytest.mark.mm


def test_mask_rcnn_builds_with_frozen_backbone_and_simple_fpn(tiny_backbone):
    from evals.detection.mmdet_adapter import build_model, mask_rcnn_config

    model = build_model(mask_rcnn_config(dict(backbone=tiny_backbone), 32, 8, (0.5,) * 3, (0.25,) * 3,
                                         num_classes=3, channels=32))
    model.init_weights()
    model.train()
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


@pytest.mark.slow
def test_mmdet_mask_rcnn_trains_and_reports_bbox_and_segm_ap(coco_tree, tiny_backbone, tmp_path):
    parser = argparse.ArgumentParser()
    protocol.add_arguments(parser)
    args = parser.parse_args(["--data", str(coco_tree), "--engine", "mmdet", "--max-iters", "3", "--min-size", "128",
                              "--max-size", "128", "--pyramid-channels", "32",
                              "--detections-per-image", "20", "--out", str(tmp_path)])
    result = protocol.run(tiny_backbone, args)
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        assert 0 <= result[key] <= 100
    # COCOeval ran: it marks size ranges without ground truth (all objects here are small) -1.
    assert result["bbox_APm"] is None and result["segm_APl"] is None
    p = result["protocol"]
    assert p["engine"] == "mmdet" and p["epochs"] == 12 and p["iters"] == 3 and p["num_classes"] == 3
    assert (tmp_path / "coco_det_metrics.json").exists()
