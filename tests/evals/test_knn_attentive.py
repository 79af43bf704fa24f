"""k-NN and attentive probes: right on toy data, at chance on shuffled labels, and from the
command line on generated scenes into the tables, with learning curves beside the result."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from evals.attentive import attentive_probe
from evals.cli import main
from evals.features import FeatureSet
from evals.knn import knn_probe, knn_scores


def toy(n: int, classes: int = 4, dim: int = 16, tokens: int = 6, seed: int = 0, shuffle: bool = False):
    """Features where the class is a centre in feature space; for the attentive probe the
    class signal sits in ONE random token of each image, the rest is noise."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 1, (classes, dim)) * 3
    labels = rng.integers(0, classes, n)
    x = (centers[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    grid = rng.normal(0, 1, (n, tokens, dim)).astype(np.float32)
    grid[np.arange(n), rng.integers(0, tokens, n)] += centers[labels] * 2
    if shuffle:
        labels = rng.permutation(labels)
    return FeatureSet(x, np.concatenate([x, -x], 1), x[:, :4], labels, {}, {"tokens": grid.astype(np.float16)})


def test_knn_votes_are_temperature_weighted():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.2, 1.0]])
    # k=3: two class-0 votes at low similarity lose to one class-1 vote at high similarity with T small
    assert knn_scores(bank, labels, query, torch.tensor([1]), [3], 2, temperature=0.07)[3]["top1"] == 100.0
    # with a huge temperature every vote weighs 1: the majority (class 0) wins
    assert knn_scores(bank, labels, query, torch.tensor([1]), [3], 2, temperature=1e6)[3]["top1"] == 0.0


def test_knn_probe_learns_separable_and_fails_on_shuffled():
    result = knn_probe(toy(400), toy(200, seed=1), feature_sets=("last1", "last4"))
    assert result["top1"] > 95 and {r["k"] for r in result["grid"]} == {10, 20} and len(result["grid"]) == 4
    assert result["selected"]["k"] in (10, 20) and "holdout" in result["selected_on"]
    assert knn_probe(toy(400, shuffle=True), toy(200, seed=1))["top1"] < 45  # chance 25 %


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one thread is many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_attentive_probe_finds_the_informative_token(one_thread):
    result = attentive_probe(toy(200), toy(100, seed=1), lrs=(1e-3, 3e-3), epochs=8, batch_size=16)
    assert result["top1"] > 85, result["grid"]
    assert len(result["curves"]) == 8 * 2 and {"loss", "val_top1", "holdout_top1"} <= set(result["curves"][0])
    first, last = (np.mean([c["loss"] for c in result["curves"] if c["epoch"] == e]) for e in (1, 8))
    assert last < first
    shuffled = attentive_probe(toy(200, shuffle=True), toy(100, seed=1), lrs=(1e-3,), epochs=4, batch_size=16)
    assert shuffled["top1"] < 45


def test_attentive_probe_needs_tokens():
    features = toy(20)
    features.extra.clear()
    with pytest.raises(ValueError, match="no patch tokens"):
        attentive_probe(features, toy(20), epochs=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from tcjepa.data.layouts import write_scene_dataset

    root = tmp_path_factory.mktemp("probe_scenes")
    write_scene_dataset(root, train=36, val=12, captions_per_image=1, image_size=32, seed=0, progress=False)
    return root


@pytest.mark.slow
def test_knn_and_attentive_from_the_cli_reach_the_tables(tmp_path, scenes):
    from global_helpers import save_ijepa_pth_tar

    save_ijepa_pth_tar(tmp_path / "w.pth.tar")
    common = ["--backbone", "ijepa", "--weights", str(tmp_path / "w.pth.tar"), "--data", str(scenes / "imagenet"),
              "--device", "cpu", "--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "runs")]
    assert main(["knn", *common, "--ks", "5", "10"]) == 0
    assert main(["attentive", *common, "--epochs", "2", "--lrs", "0.001"]) == 0
    records = {json.loads(p.read_text())["task"]: (p, json.loads(p.read_text())) for p in (tmp_path / "runs").glob("*.json")}
    assert set(records) == {"in1k_knn", "in1k_attentive"}
    knn = records["in1k_knn"][1]
    assert {r["k"] for r in knn["protocol"]["grid"]} == {5, 10} and knn["protocol"]["features"]["default"] == "patch_mean"
    path, attentive = records["in1k_attentive"]
    curves = pd.read_csv(path.with_name(path.stem + ".curves.csv"))
    assert list(curves["epoch"]) == [1, 2] and curves["loss"].notna().all()
    assert any(path.with_name(path.stem + ".tb").iterdir())  # TensorBoard event file
    assert main(["tables", "--out", str(tmp_path / "t"), "--runs", str(tmp_path / "runs")]) == 0
    probes = pd.read_csv(tmp_path / "t" / "probes_measured.csv", keep_default_na=False).set_index("method")
    assert float(probes.loc["I-JEPA", "IN-1k k-NN top-1"]) == round(knn["value"], 1)
    assert float(probes.loc["I-JEPA", "IN-1k attentive top-1"]) == round(attentive["value"], 1)
