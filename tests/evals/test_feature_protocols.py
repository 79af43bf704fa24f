"""Each backbone is probed by its own protocol (patch mean / class token + patch mean / MAP),
the vectors are what the reference models compute, and the linear grid sweeps protocols in
one pass with the choice recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from global_helpers import TINY, make_imagenet_tree, save_hf, save_ijepa_pth_tar, save_timm

from evals.backbones import BackboneSpec, UserError, build_backbone
from evals.cli import main
from evals.feature_protocols import feature_array, pooled_arrays, resolve_features
from evals.features import FeatureSet


def hf_dinov2(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    model = save_hf(Dinov2Model, Dinov2Config(**{**TINY, "num_hidden_layers": 4}, image_size=28, patch_size=7), tmp_path / "d")
    return model, build_backbone(BackboneSpec("dinov2", str(tmp_path / "d"), {"image_size": 28}))


def test_defaults_are_each_backbones_own(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    _, dinov2 = hf_dinov2(tmp_path)
    save_hf(SiglipVisionModel, SiglipVisionConfig(**TINY, image_size=32, patch_size=16), tmp_path / "s")
    siglip = build_backbone(BackboneSpec("siglip2", str(tmp_path / "s")))
    save_ijepa_pth_tar(tmp_path / "w.pth.tar")
    ijepa = build_backbone(BackboneSpec("ijepa", str(tmp_path / "w.pth.tar")))
    save_timm("vit_small_patch14_dinov2", tmp_path / "t", embed_dim=48, depth=2, img_size=28)
    timm_dinov2 = build_backbone(BackboneSpec("dinov2", str(tmp_path / "t")))
    save_timm("vit_base_patch16_siglip_224", tmp_path / "ts", embed_dim=48, depth=2, img_size=32)
    timm_siglip = build_backbone(BackboneSpec("siglip2", str(tmp_path / "ts")))
    defaults = {name: b.protocol_info()["default_features"] for name, b in
                [("dinov2", dinov2), ("siglip", siglip), ("ijepa", ijepa), ("timm_dinov2", timm_dinov2),
                 ("timm_siglip", timm_siglip)]}
    assert defaults == {"dinov2": "cls_patch_mean", "siglip": "map", "ijepa": "patch_mean",
                        "timm_dinov2": "cls_patch_mean", "timm_siglip": "map"}
    assert resolve_features(None, dinov2.protocol_info()) == ["cls_patch_mean:last1", "cls_patch_mean:last4"]
    assert resolve_features(None, siglip.protocol_info()) == ["map:last1"]
    assert resolve_features(["all"], ijepa.protocol_info()) == ["patch_mean:last1", "patch_mean:last4"]
    assert resolve_features(["patch_mean:last4", "map"], siglip.protocol_info()) == ["patch_mean:last4", "map:last1"]
    with pytest.raises(UserError, match="'cls_patch_mean' does not apply"):
        resolve_features(["cls_patch_mean"], ijepa.protocol_info())
    with pytest.raises(UserError, match="unknown feature protocol 'cls'"):
        resolve_features(["cls"], dinov2.protocol_info())


def test_dinov2_class_tokens_are_the_reference_models_normed_hidden_states(tmp_path):
    model, backbone = hf_dinov2(tmp_path)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        patches, global_vector, class_tokens = backbone.forward_features(x, 4)
    expected = [model.layernorm(h)[:, 0] for h in hidden[-4:]]
    for got, want in zip(class_tokens, expected):
        torch.testing.assert_close(got, want)
    arrays = pooled_arrays(patches, global_vector, class_tokens)
    features = FeatureSet(*(arrays[k].numpy() for k in ("last1", "last4", "global")), np.zeros(2), {},
                          {"cls4": arrays["cls4"].numpy()})
    last1 = np.asarray(feature_array(features, "cls_patch_mean:last1"))
    patch_mean = patches[-1].mean(dim=(1, 2))
    torch.testing.assert_close(torch.from_numpy(last1), torch.cat([expected[-1], patch_mean], 1))
    view = feature_array(features, "cls_patch_mean:last4")  # lazy: reads only the rows asked for
    assert view.shape == (2, 5 * 32)
    torch.testing.assert_close(torch.from_numpy(view[[1]]), torch.cat([*expected, patch_mean], 1)[[1]])
    torch.testing.assert_close(torch.from_numpy(np.asarray(view)), torch.cat([*expected, patch_mean], 1))


def test_timm_dinov2_class_tokens(tmp_path):
    model = save_timm("vit_small_patch14_reg4_dinov2", tmp_path / "t", embed_dim=48, depth=2, img_size=28)
    backbone = build_backbone(BackboneSpec("dinov2", str(tmp_path / "t"), {"image_size": 28}))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        _, _, class_tokens = backbone.forward_features(x, 1)
        torch.testing.assert_close(class_tokens[-1], model.forward_features(x)[:, 0])


def test_linear_sweeps_protocols_in_one_pass_and_records_them(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    root = make_imagenet_tree(tmp_path / "in", per_class=(8, 4), size=28)
    save_hf(Dinov2Model, Dinov2Config(**TINY, image_size=28, patch_size=7), tmp_path / "d")
    common = ["linear", "--backbone", "dinov2", "--weights", str(tmp_path / "d"), "--data", str(root),
              "--device", "cpu", "--workers", "0", "--epochs", "2", "--lrs", "0.01", "0.1",
              "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    (default,) = (tmp_path / "default").glob("*.json")
    record = json.loads(default.read_text())
    assert record["protocol"]["features"]["default"] == "cls_patch_mean"
    assert {r["features"] for r in record["protocol"]["grid"]} == {"cls_patch_mean:last1", "cls_patch_mean:last4"}
    assert main([*common, "--features", "all", "--out", str(tmp_path / "all")]) == 0
    (swept,) = (tmp_path / "all").glob("*.json")
    record = json.loads(swept.read_text())
    grid = record["protocol"]["grid"]
    assert {r["features"] for r in grid} == {"patch_mean:last1", "patch_mean:last4",
                                             "cls_patch_mean:last1", "cls_patch_mean:last4"}
    assert len(grid) == 8  # 4 feature sets x 2 lrs, one pass
    selected = record["protocol"]["features"]["selected"]
    assert selected == record["protocol"]["selected"]["features"] and record["protocol"]["features"]["selected_is"]
