"""configs/eval/ files load strictly for their task, key=value overrides and flags win over
them in that order, and the values a run used are recorded with its result."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from evals.cli import build_parser, main
from evals.eval_config import config_values

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "eval").glob("*.yaml"))


def values(path, overrides=()):
    from tcjepa.config import _read_yaml

    command = _read_yaml(Path(path))["command"]  # with its base: chain
    _, subparsers = build_parser([command])
    return config_values(subparsers[command], command, str(path), overrides)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_eval_config_loads_for_its_task(path):
    loaded = values(path)
    assert loaded  # every file pins something, and every key is an option of its task


def test_paper_linear_protocol_values():
    loaded = values(CONFIGS[0].parent / "linear_in1k.yaml", ["epochs=3", "lrs=[0.1]"])
    assert loaded["features"] == ["patch_mean"] and loaded["image_size"] == 224 and loaded["probe_batch_size"] == 1024
    assert loaded["epochs"] == 3 and loaded["lrs"] == [0.1]  # overrides win over the file
    assert values(CONFIGS[0].parent / "linear_in1k_own_protocols.yaml")["features"] == ["all"]  # base: chain
    coco = values(CONFIGS[0].parent / "coco_mask_rcnn_1x.yaml")
    assert (coco["epochs"], coco["min_size"], coco["max_size"], coco["engine"]) == (12, 800, 1333, "mmdet")
    ade = values(CONFIGS[0].parent / "ade20k_linear.yaml")
    assert (ade["crop_size"], ade["iters"], ade["engine"]) == (512, 40000, "mmseg")


@pytest.mark.parametrize("text, message", [
    ("command: linear\nepoch: 3\n", "unknown key 'epoch'"),
    ("command: linear\nepochs: three\n", "epochs: 'three' is not valid"),
    ("command: linear\nepochs: 0\n", "must be >= 1"),
    ("command: linear\noptimizer: lamb\n", "'lamb' is not one of ['sgd', 'adamw']"),
    ("command: knn\n", "written for `tcjepa-eval knn`, not `tcjepa-eval linear`"),
    ("command: linear\nlrs: {a: 1}\n", "invalid value"),
])
def test_bad_configs_are_one_line_errors(tmp_path, capsys, text, message):
    (tmp_path / "c.yaml").write_text(text)
    assert main(["linear", "--config", str(tmp_path / "c.yaml"), "--ckpt", "x", "--data", "y"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(tmp_path / "c.yaml") in err and "\n" not in err


def test_config_run_records_values_and_flags_override(tmp_path):
    from global_helpers import make_imagenet_tree, save_ijepa_pth_tar

    root = make_imagenet_tree(tmp_path / "in", per_class=(6, 2))
    save_ijepa_pth_tar(tmp_path / "w.pth.tar")
    (tmp_path / "tiny.yaml").write_text(f"base: {CONFIGS[0].parent / 'linear_in1k.yaml'}\n"
                                        f"data: {root}\nimage_size: 32\nbatch_size: 4\nworkers: 0\n")
    assert main(["linear", "--config", str(tmp_path / "tiny.yaml"), "--backbone", "ijepa", "--weights",
                 str(tmp_path / "w.pth.tar"), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "runs"), "--epochs", "2", "lrs=[0.05,0.5]", "probe_batch_size=8"]) == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    settings = record["protocol"]["settings"]
    assert settings["epochs"] == 2  # the flag beats the file's 10
    assert settings["lrs"] == [0.05, 0.5] and settings["batch_size"] == 8  # overrides beat the file
    assert record["protocol"]["config"]["values"]["probe_batch_size"] == 8
    assert record["protocol"]["features"]["swept"] == ["patch_mean:last1", "patch_mean:last4"]
    assert record["protocol"]["backbone"]["image_size"] == 32
    curves = pd.read_csv(path.with_name(path.stem + ".curves.csv"))
    assert len(curves) == 2 * 2 * 2  # epochs x feature sets x lrs, one row each
    assert set(curves["head"]) == {f"patch_mean:last{n}@lr={lr}" for n in (1, 4) for lr in (0.05, 0.5)}
    assert curves[["loss", "val_top1", "holdout_top1"]].notna().all().all()
    events = list(path.with_name(path.stem + ".tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
