"""ADE20k reader and the pure-torch linear segmentation engine (no mm stack)."""
import argparse
import json

import numpy as np
import pytest
import torch
from dense_helpers import CLASS_NAMES, ade_tree, tiny_backbone, write_ade_tree  # noqa: F401 (fixtures)

from evals.backbones.base import UserError
from evals.datasets.ade20k import ADE20K_CLASSES, IGNORE_INDEX, ADE20kSegmentation
from evals.segmentation import protocol
from evals.segmentation.linear_head import LinearSegmentationHead, upsample_logits
from evals.segmentation.torch_engine import (
    SegmentationSettings,
    evaluate_linear_head,
    protocol_size,
    run_torch_segmentation,
    segmentation_metrics,
    sliding_windows,
    update_confusion,
)


def test_ade20k_reader_reduces_zero_label_and_reads_class_names(ade_tree):
    train = ADE20kSegmentation(ade_tree, "training")
    assert train.classes == CLASS_NAMES and len(train) == 8
    image, label = train[0]
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3) and label.shape == (48, 64)
    raw = np.asarray(__import__("PIL.Image").Image.open(train.label_path(0)))
    assert (label[raw == 0] == IGNORE_INDEX).all()
    assert (label[raw > 0] == raw[raw > 0] - 1).all()
    # The ADEChallengeData2016 folder itself works as root too.
    assert len(ADE20kSegmentation(ade_tree / "ADEChallengeData2016", "val")) == 4


def test_ade20k_reader_defaults_to_150_names_and_names_the_layout_on_error(tmp_path):
    root = write_ade_tree(tmp_path / "plain", n_train=1, n_val=1, with_classes_json=False)
    assert ADE20kSegmentation(root, "validation").classes == ADE20K_CLASSES
    with pytest.raises(UserError, match="ADEChallengeData2016/images"):
        ADE20kSegmentation(tmp_path / "nowhere", "training")


def test_confusion_matrix_metrics_match_a_hand_computation():
    # 3 classes; class 2 never appears in labels or predictions -> excluded from the mean.
    label = torch.tensor([0, 0, 0, 1, 1, IGNORE_INDEX])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    confusion = update_confusion(torch.zeros(3, 3, dtype=torch.int64), pred, label)
    assert confusion.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    m = segmentation_metrics(confusion, ["a", "b", "c"])
    iou_a, iou_b = 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)
    assert m["per_class_iou"]["a"] == pytest.approx(100 * iou_a)
    assert m["per_class_iou"]["b"] == pytest.approx(100 * iou_b)
    assert m["per_class_iou"]["c"] is None
    assert m["mIoU"] == pytest.approx(100 * (iou_a + iou_b) / 2)
    assert m["aAcc"] == pytest.approx(100 * 3 / 5)
    assert m["mAcc"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_sliding_windows_follow_mmseg_grid_and_resize_rule():
    windows = sliding_windows(512, 683, crop=512, stride=341)
    assert windows == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert sliding_windows(20, 30, crop=32, stride=16) == [(0, 20, 0, 30)]
    assert protocol_size(480, 640, 512) == (512, 683)
    assert protocol_size(100, 1000, 64) == (26, 256)  # long side capped at 4x crop


def test_upsample_logits_crops_the_patch_padding():
    logits = torch.arange(4.0).view(1, 1, 2, 2)
    out = upsample_logits(logits, (12, 16), patch_size=8)
    assert out.shape == (1, 1, 12, 16)
    full = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(out, full[..., :12, :16])


def test_trained_head_beats_untrained_head(ade_tree, tiny_backbone):
    train = ADE20kSegmentation(ade_tree, "training")
    val = ADE20kSegmentation(ade_tree, "validation")
    settings = SegmentationSettings(crop_size=32, stride=16, iters=40, batch_size=8, lr=1e-2)
    torch.manual_seed(0)
    untrained = evaluate_linear_head(tiny_backbone, LinearSegmentationHead(32, 3), val, settings)
    trained, head = run_torch_segmentation(tiny_backbone, train, val, settings)
    for m in (untrained, trained):
        assert 0 <= m["mIoU"] <= 100 and 0 <= m["aAcc"] <= 100
    assert trained["mIoU"] > untrained["mIoU"] + 20
    assert trained["engine_settings"]["train_features"].startswith("cached")


def test_protocol_run_returns_metrics_and_protocol_settings(ade_tree, tiny_backbone, tmp_path):
    parser = argparse.ArgumentParser()
    protocol.add_arguments(parser)
    args = parser.parse_args(["--data", str(ade_tree), "--engine", "torch", "--iters", "5", "--batch-size", "4",
                              "--crop-size", "32", "--layers", "2", "--max-cache-gb", "0",
                              "--out", str(tmp_path)])
    result = protocol.run(tiny_backbone, args)
    assert np.isfinite(result["mIoU"]) and set(result["per_class_iou"]) == set(CLASS_NAMES)
    p = result["protocol"]
    assert p["engine"] == "torch" and p["crop_size"] == 32 and p["slide_stride"] == 21 and p["iters"] == 5
    assert p["layers"].startswith("last 2") and "reduce_zero_label" in p["label_reduction"]
    assert p["train_features"] == "online"  # max-cache-gb 0 forces the augmented online path
    assert json.loads((tmp_path / "ade20k_linear_metrics.json").read_text())["protocol"]["patch_size"] == 8
