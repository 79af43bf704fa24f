"""COCO reader, the simple feature pyramid and the torchvision Mask R-CNN fallback (no mm stack)."""
import argparse
import math

import pytest
import torch
from dense_helpers import CLASS_NAMES, coco_tree, tiny_backbone  # noqa: F401 (fixtures)

from evals.backbones.base import UserError
from evals.datasets.coco import COCOInstances
from evals.detection import protocol
from evals.detection.simple_fpn import SimpleFeaturePyramid
from evals.detection.torchvision_engine import FrozenViTPyramid, lr_factor


@pytest.mark.parametrize("patch_size,grid", [(16, (40, 64)), (8, (8, 12)), (14, (36, 36))])
def test_simple_fpn_gives_strides_4_to_64(patch_size, grid):
    fpn = SimpleFeaturePyramid(in_channels=64, patch_size=patch_size, out_channels=32)
    outs = fpn(torch.randn(2, 64, *grid))
    assert fpn.strides == (4, 8, 16, 32, 64)
    # Patch 14: the 36x36 grid (504 px) is resampled to a stride-16 grid of round(31.5) = 32.
    base_stride, base = (16, [32, 32]) if patch_size == 14 else (patch_size, list(grid))
    for out, stride in zip(outs, fpn.strides):
        assert out.shape[:2] == (2, 32)
        assert list(out.shape[-2:]) == [math.ceil(n * base_stride / stride) for n in base]


def test_simple_fpn_p16_matches_vitdet_layout():
    fpn = SimpleFeaturePyramid(in_channels=64, patch_size=16, out_channels=32)
    outs = fpn(torch.randn(1, 64, 4, 6))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    deconvs = [m for m in fpn.scales[0].modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 2 and isinstance(fpn.scales[3][0], torch.nn.MaxPool2d)


def test_frozen_backbone_gets_no_gradient(tiny_backbone):
    model = FrozenViTPyramid(tiny_backbone, out_channels=16)
    feats = model(torch.randn(1, 3, 60, 64))  # not a patch multiple: padded inside
    assert list(feats) == ["0", "1", "2", "3", "pool"] and model.out_channels == 16
    sum(f.mean() for f in feats.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.parameters())
    assert all(p.grad is not None for p in model.pyramid.parameters())


def test_coco_reader_returns_boxes_masks_and_contiguous_labels(coco_tree):
    train = COCOInstances(coco_tree, "train")
    assert train.classes == CLASS_NAMES and train.category_ids == [1, 2, 3]
    image, target = train[0]
    assert image.shape == (64, 64, 3)
    n = len(target["labels"])
    assert n >= 1 and target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 64, 64)
    assert set(target["labels"].tolist()) <= {0, 1, 2}
    for box, mask in zip(target["boxes"], target["masks"]):  # boxes enclose their masks
        ys, xs = mask.nonzero()
        assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
    with pytest.raises(UserError, match="instances_val2017.json"):
        COCOInstances(coco_tree / "nowhere", "val")


def test_lr_schedule_is_1x_shaped():
    total = 1200
    assert lr_factor(0, total, 100) == pytest.approx(0.001)
    assert lr_factor(500, total, 100) == 1.0
    assert lr_factor(800, total, 100) == pytest.approx(0.1)
    assert lr_factor(1100, total, 100) == pytest.approx(0.01)


@pytest.mark.slow
def test_torchvision_mask_rcnn_trains_and_reports_coco_ap(coco_tree, tiny_backbone):
    parser = argparse.ArgumentParser()
    protocol.add_arguments(parser)
    args = parser.parse_args(["--data", str(coco_tree), "--engine", "torchvision", "--max-iters", "3",
                              "--min-size", "128", "--max-size", "128", "--pyramid-channels", "32",
                              "--detections-per-image", "20"])
    result = protocol.run(tiny_backbone, args)
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        assert 0 <= result[key] <= 100
    # COCOeval ran: it marks size ranges without ground truth (all objects here are small) -1.
    assert result["bbox_APm"] is None and result["segm_APl"] is None
    p = result["protocol"]
    assert p["engine"] == "torchvision" and p["epochs"] == 12 and p["iters"] == 3 and p["num_classes"] == 3


@pytest.mark.slow
def test_torchvision_training_resumes_after_a_crash_to_the_uninterrupted_weights(coco_tree, tiny_backbone, tmp_path):
    from evals.detection.torchvision_engine import DetectionSettings, build_mask_rcnn, train_mask_rcnn
    from tcjepa.train.checkpoint import load_checkpoint

    train_set = COCOInstances(coco_tree, "train", skip_empty=True)

    def trained(work_dir, resume=False, crash_after=None):
        torch.manual_seed(0)
        settings = DetectionSettings(max_iters=3, batch_size=1, min_size=64, max_size=64, pyramid_channels=16,
                                     rois_per_image=16, warmup_iters=1, work_dir=str(work_dir), checkpoint_every=1,
                                     resume=resume)
        model = build_mask_rcnn(tiny_backbone, train_set.num_classes, settings)
        if crash_after is not None:  # the process dies while loading the batch of step crash_after + 1
            calls, read = [0], train_set.__class__.__getitem__

            def dies(self, i):
                calls[0] += 1
                if calls[0] > crash_after:
                    raise KeyboardInterrupt("killed")
                return read(self, i)

            train_set.__class__.__getitem__ = dies
        try:
            train_mask_rcnn(model, train_set, settings)
        finally:
            train_set.__class__.__getitem__ = read if crash_after is not None else train_set.__class__.__getitem__
        return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.backbone.")}

    whole = trained(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        trained(tmp_path / "crashed", crash_after=2)
    saved = load_checkpoint(tmp_path / "crashed" / "head_last.pt")
    assert saved["step"] == 2 and not any(k.startswith("backbone.backbone.") for k in saved["head"])
    resumed = trained(tmp_path / "crashed", resume=True)
    assert load_checkpoint(tmp_path / "crashed" / "head_last.pt")["step"] == 3
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
