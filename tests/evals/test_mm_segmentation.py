"""The OpenMMLab stack and the MMSegmentation adapter.

Marked ``mm``: they fail (not skip) without the stack, which `make test` installs through
scripts/install_mm.sh. mm modules are imported inside the tests so that collecting this file
never needs them.
"""
import argparse
import os
from pathlib import Path

import pytest
import torch
from dense_helpers import TINY_VIT_NAME, CLASS_NAMES, TinyViTBackbone, ade_tree, tiny_backbone  # noqa: F401

from evals.datasets.ade20k import ADE20K_CLASSES, ADE20kSegmentation
from evals.segmentation import protocol
from evals.segmentation.torch_engine import SegmentationSettings, run_torch_segmentation

pytestmark = pytest.mark.mm


def test_mm_stack_imports_with_compiled_ops():
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    from mmcv.ops import nms

    assert (mmcv.__version__, mmseg.__version__, mmdet.__version__, mmengine.__version__) == (
        "2.1.0", "1.2.2", "3.3.0", "0.10.7")
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_ade20k_class_names_match_mmseg():
    from mmseg.datasets import ADE20KDataset

    assert tuple(ADE20KDataset.METAINFO["classes"]) == ADE20K_CLASSES


def test_frozen_backbone_builds_from_a_backbone_spec_in_the_config():
    from evals.segmentation.mmseg_adapter import MODELS

    module = MODELS.build(dict(type="FrozenBackbone", spec=dict(name=TINY_VIT_NAME), layers=1))
    assert isinstance(module.backbone, TinyViTBackbone)
    assert not any(p.requires_grad for p in module.parameters()) and not module.training
    with pytest.raises(ValueError, match="exactly one of"):
        MODELS.build(dict(type="FrozenBackbone", layers=1))


def test_frozen_backbone_is_frozen_at_build_and_keeps_its_weights(tiny_backbone):
    from evals.segmentation.mmseg_adapter import MODELS

    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    module = MODELS.build(dict(type="FrozenBackbone", backbone=tiny_backbone, layers=2))
    module.init_weights()  # mm runners call this; it must not re-initialise pretrained weights
    module.train()
    assert module.backbone is tiny_backbone and not module.training and not module.backbone.training
    assert not any(p.requires_grad for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.state_dict().items())
    maps = module(torch.randn(2, 3, 32, 40))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 5)] * 2


@pytest.mark.slow
def test_mmseg_engine_trains_evaluates_and_reloads_its_checkpoint(ade_tree, tiny_backbone, tmp_path):
    from evals.segmentation.mmseg_adapter import run_mmseg_segmentation

    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    parser = argparse.ArgumentParser()
    protocol.add_arguments(parser)
    args = parser.parse_args(["--data", str(ade_tree), "--engine", "mmseg", "--iters", "4", "--batch-size", "4",
                              "--crop-size", "32", "--lr", "1e-2", "--out", str(tmp_path)])
    result = protocol.run(tiny_backbone, args)
    assert 0 <= result["mIoU"] <= 100 and 0 <= result["aAcc"] <= 100
    assert set(result["per_class_iou"]) == set(CLASS_NAMES)
    assert result["protocol"]["engine"] == "mmseg" and result["protocol"]["iters"] == 4

    # mmengine's own checkpoint (message hub, numpy state) loads with torch's weights-only
    # unpickler thanks to the allow-list, and reproduces the numbers.
    checkpoint = Path(tmp_path, "mmseg", "iter_4.pth")
    assert checkpoint.exists()
    settings = protocol.settings_from_args(args)
    val = ADE20kSegmentation(ade_tree, "validation")
    again = run_mmseg_segmentation(tiny_backbone, None, val, settings, checkpoint=str(checkpoint))
    assert again["mIoU"] == pytest.approx(result["mIoU"], abs=0.01)
    # ...and the allow-list does not outlive the runner: other loads stay strict.
    assert getattr not in torch.serialization.get_safe_globals()
    with pytest.raises(Exception, match="weights_only|WeightsUnpickler|Unsupported global"):
        torch.load(checkpoint, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("crop_size,tolerance", [(48, 0.02), (32, 0.3)])
def test_mmseg_and_torch_engines_agree_on_the_same_head(ade_tree, tiny_backbone, crop_size, tolerance):
    from evals.segmentation.mmseg_adapter import run_mmseg_segmentation

    train = ADE20kSegmentation(ade_tree, "training")
    val = ADE20kSegmentation(ade_tree, "validation")
    # Crop 48 = the images' short side: no resize, so only rounding (mmseg reports 2 decimals)
    # separates the engines. Crop 32: both resize 48x64 -> 32x43 (torch mimics cv2's bilinear);
    # JPEG decoding (PIL vs cv2) and uint8 rounding leave a few pixels different.
    settings = SegmentationSettings(crop_size=crop_size, stride=16, layers=2, iters=2, batch_size=8, lr=2e-3)
    torch_metrics, head = run_torch_segmentation(tiny_backbone, train, val, settings)
    mm_metrics = run_mmseg_segmentation(tiny_backbone, None, val, settings, head=head)
    assert 10 < torch_metrics["mIoU"] < 90  # a half-trained head: disagreements would show
    assert mm_metrics["mIoU"] == pytest.approx(torch_metrics["mIoU"], abs=tolerance)
    assert mm_metrics["aAcc"] == pytest.approx(torch_metrics["aAcc"], abs=tolerance)
