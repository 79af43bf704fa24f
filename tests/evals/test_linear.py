"""Linear probes learn separable toy data, stay at chance on shuffled labels; features
extract once and come back from the cache; ImageNet layout errors are clear."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from global_helpers import make_imagenet_tree, save_ijepa_pth_tar

from evals.backbones import BackboneSpec, build_backbone
from evals.datasets.imagenet import DatasetLayoutError, ImageNetFolder, eval_transform
from evals.features import FeatureSet, extract_features
from evals.linear import linear_probe, logreg_probe


def toy(n: int, classes: int = 4, dim: int = 16, seed: int = 0, shuffle: bool = False) -> FeatureSet:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 1, (classes, dim)) * 3
    labels = rng.integers(0, classes, n)
    x = centers[labels] + rng.normal(0, 1, (n, dim))
    if shuffle:
        labels = rng.permutation(labels)
    x = x.astype(np.float32)
    return FeatureSet(x, np.concatenate([x, -x], 1), x[:, :4], labels, {})


def test_linear_grid_learns_separable_and_fails_on_shuffled():
    train, val = toy(400), toy(200, seed=1)
    result = linear_probe(train, val, lrs=(0.01, 0.1), epochs=5, batch_size=64)
    assert result["top1"] > 95 and result["top5"] == 100
    assert len(result["grid"]) == 4 and "holdout" in result["selected_on"]
    assert result["selected"]["features"] in ("last1", "last4")
    shuffled = linear_probe(toy(400, shuffle=True), val, lrs=(0.01, 0.1), epochs=5, batch_size=64)
    assert shuffled["top1"] < 45  # chance is 25 %


def test_linear_grid_val_selection_and_adamw():
    result = linear_probe(toy(300), toy(100, seed=2), optimizer="adamw", selection="val", epochs=3)
    assert result["settings"]["selection"] == "val" and result["selected_on"].startswith("val")
    assert result["top1"] == max(r["val_top1"] for r in result["grid"])


def test_logreg_protocol():
    result = logreg_probe(toy(300), toy(100, seed=3), cs=(0.1, 1.0))
    assert result["protocol"] == "logreg" and result["top1"] > 95
    assert result["selected"]["C"] in (0.1, 1.0)
    assert logreg_probe(toy(300, shuffle=True), toy(100, seed=3), cs=(0.1,))["top1"] < 45


def test_features_extract_once_then_cache(tmp_path):
    root = make_imagenet_tree(tmp_path / "imagenet")
    save_ijepa_pth_tar(tmp_path / "w.pth.tar", width=64, depth=4)
    bb = build_backbone(BackboneSpec("ijepa", str(tmp_path / "w.pth.tar")))
    ds = ImageNetFolder(root, "train", eval_transform(32, bb.mean, bb.std))
    feats = extract_features(bb, ds, tmp_path / "cache", batch_size=5)
    assert feats.last1.shape == (12, 64) and feats.last4.shape == (12, 256) and feats.global_.shape == (12, 64)
    np.testing.assert_allclose(feats.last4[:, -64:], feats.last1)
    np.testing.assert_allclose(feats.global_, feats.last1, rtol=1e-5, atol=1e-6)  # JEPA global = patch mean
    assert list(feats.labels) == [0] * 6 + [1] * 6
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and not any(".tmp" in f.name for f in folders)
    again = extract_features(bb, ds, tmp_path / "cache", batch_size=5)
    assert again.meta["key"] == feats.meta["key"] and len(list((tmp_path / "cache").iterdir())) == 1
    val = ImageNetFolder(root, "val", eval_transform(32, bb.mean, bb.std))
    assert val.classes == ds.classes and extract_features(bb, val, tmp_path / "cache").meta["key"] != feats.meta["key"]


def test_imagenet_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="missing"):
        ImageNetFolder(tmp_path, "train")
    make_imagenet_tree(tmp_path / "out" / "imagenet")
    with pytest.raises(DatasetLayoutError, match="did you mean"):
        ImageNetFolder(tmp_path / "out", "val")
    root = tmp_path / "out" / "imagenet"
    (root / "val" / "n99").mkdir()
    (root / "val" / "n01" / "n01_0.JPEG").rename(root / "val" / "n99" / "a.JPEG")
    with pytest.raises(DatasetLayoutError, match="n99"):
        ImageNetFolder(root, "val")
