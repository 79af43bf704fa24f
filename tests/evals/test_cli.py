"""tcjepa-eval: user errors exit 2 with one line; linear and tables run end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
from global_helpers import TINY, make_imagenet_tree, save_hf, save_ijepa_pth_tar

from evals.cli import main
from evals.results import read_runs


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tcjepa-eval: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    make_imagenet_tree(tmp_path / "in")
    assert "unknown backbone" in one_line_error(capsys, ["linear", "--backbone", "mae", "--weights", "x", "--data", str(tmp_path / "in")])
    assert "no such file" in one_line_error(capsys, ["linear", "--ckpt", str(tmp_path / "nope.pt"), "--data", str(tmp_path / "in")])
    save_ijepa_pth_tar(tmp_path / "w.pth.tar")
    ckpt = torch.load(tmp_path / "w.pth.tar", weights_only=True)
    ckpt["target_encoder"]["module.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pth.tar")
    err = one_line_error(capsys, ["linear", "--backbone", "ijepa", "--weights", str(tmp_path / "bad.pth.tar"),
                                  "--data", str(tmp_path / "in")])
    assert "extra.weight" in err
    assert "train/<class>" in one_line_error(capsys, ["linear", "--backbone", "ijepa", "--weights",
                                                      str(tmp_path / "w.pth.tar"), "--data", str(tmp_path)])
    assert "--ckpt" in one_line_error(capsys, ["linear", "--data", str(tmp_path / "in")])
    assert "no such folder" in one_line_error(capsys, ["tables", "--out", str(tmp_path / "t"), "--runs", str(tmp_path / "none")])


def test_a_torchrun_rank_ends_through_exit_rank_however_the_command_ends(tmp_path, capsys, monkeypatch):
    """tcjepa.cli.rank_exit decides what ending means under torchrun (its own test runs it in a
    child process); here: every way out of tcjepa-eval goes through it."""
    import evals.cli

    ended, left = [], []
    monkeypatch.setattr(evals.cli, "exit_rank", lambda status: ended.append(status) or status)
    monkeypatch.setattr(evals.cli, "leave_process_group", lambda: left.append(True))
    assert main(["backbones"]) == 0 and ended == [0]
    one_line_error(capsys, ["tables", "--out", str(tmp_path / "t"), "--runs", str(tmp_path / "none")])
    assert ended == [0, 2] and left == []
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert left == [True] and ended == [0, 2]


def test_backbones_lists_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("tcjepa", "ijepa", "dinov2", "siglip2"))


def test_linear_end_to_end_writes_run_json(tmp_path, capsys):
    root = make_imagenet_tree(tmp_path / "in", per_class=(10, 4))
    save_ijepa_pth_tar(tmp_path / "w.pth.tar", depth=4)
    argv = ["linear", "--backbone", "ijepa", "--weights", str(tmp_path / "w.pth.tar"), "--data", str(root),
            "--device", "cpu", "--workers", "0", "--epochs", "2", "--lrs", "0.01", "0.1", "--protocol", "both",
            "--out", str(tmp_path / "runs"), "--pretraining-data", "scenes"]
    assert main(argv) == 0
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 2
    record = json.loads(runs[0].read_text())
    assert record["method"] == "I-JEPA" and record["pretraining_data"] == "scenes" and record["metric"] == "top1"
    assert record["protocol"]["backbone"]["image_size"] == 32 and "selected" in record["protocol"]
    assert main(["tables", "--out", str(tmp_path / "tables"), "--runs", str(tmp_path / "runs")]) == 0
    assert (tmp_path / "tables" / "table1_in1k_linear_by_size.md").exists()


def test_dense_protocol_results_become_metrics_and_settings():
    from evals.cli import split_protocol_result

    metrics, primary, settings = split_protocol_result(
        {"mIoU": 41.5, "aAcc": 80.0, "protocol": {"crop_size": 512}}, ("mIoU", "aAcc"))
    assert metrics == {"mIoU": 41.5, "aAcc": 80.0} and primary == "mIoU" and settings["protocol"]["crop_size"] == 512
    metrics, primary, _ = split_protocol_result({"metrics": {"bbox_mAP": 0.4}, "task": "coco_det"}, ("box_AP", "bbox_mAP"))
    assert primary == "bbox_mAP"
    metrics, _, settings = split_protocol_result({"bbox_AP": 1.0, "bbox_APl": None, "protocol": {}}, ("bbox_AP",))
    assert metrics == {"bbox_AP": 1.0, "bbox_APl": None} and "bbox_APl" not in settings
    _, primary, _ = split_protocol_result({"bbox_APl": None, "bbox_AP": 2.0}, ("bbox_APl", "segm_AP"))
    assert primary == "bbox_AP"  # a metric without a value is never the headline


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from tcjepa.data.layouts import write_scene_dataset

    root = tmp_path_factory.mktemp("scenes")
    write_scene_dataset(root, train=24, val=8, captions_per_image=2, image_size=64, seed=0, progress=False)
    return root


def save_foreign(kind: str, folder):
    """A random-weight backbone saved in its official format; returns (name, weights path)."""
    if kind == "ijepa":
        save_ijepa_pth_tar(folder / "w.pth.tar", img=64)
        return "ijepa", folder / "w.pth.tar"
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        save_hf(Dinov2Model, Dinov2Config(**TINY, image_size=56, patch_size=14), folder / "hf")
    else:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        save_hf(SiglipVisionModel, SiglipVisionConfig(**TINY, image_size=64, patch_size=16), folder / "hf")
    return kind, folder / "hf"


@pytest.mark.parametrize("kind", ["ijepa", "dinov2", "siglip2"])
def test_all_three_tasks_run_on_generated_scenes_for_foreign_backbones(tmp_path, scenes, kind):
    """The evaluation CLI's promise: the command line evaluates random-weight I-JEPA / DINOv2 / SigLIP2
    weights on the generated ImageNet, ADE20k and COCO trees, and every metric is finite."""
    name, weights = save_foreign(kind, tmp_path)
    size = "56" if kind == "dinov2" else "64"  # patch 14
    common = ["--backbone", name, "--weights", str(weights), "--image-size", size, "--device", "cpu",
              "--out", str(tmp_path / "runs")]
    assert main(["linear", *common, "--data", str(scenes / "imagenet"), "--epochs", "2", "--workers", "0",
                 "--lrs", "0.01", "--cache-dir", str(tmp_path / "features")]) == 0
    assert main(["ade20k", *common, "--data", str(scenes / "ADEChallengeData2016"), "--engine", "torch",
                 "--iters", "4", "--warmup-iters", "1", "--crop-size", size, "--batch-size", "4"]) == 0
    assert main(["coco", *common, "--data", str(scenes / "coco"), "--engine", "torchvision", "--max-iters", "2",
                 "--warmup-iters", "1", "--min-size", "64", "--max-size", "64", "--pyramid-channels", "16",
                 "--rois-per-image", "16", "--max-val-images", "4"]) == 0
    records = read_runs(tmp_path / "runs")
    assert len(records) == 3 and {r["task"] for r in records} == {"in1k_linear", "ade20k_linear", "coco_det"}
    for r in records:
        assert all(isinstance(v, float) and math.isfinite(v) for v in r["metrics"].values() if v is not None), r
        assert r["backbone"] == name and r["protocol"]["backbone"]["name"] == name
