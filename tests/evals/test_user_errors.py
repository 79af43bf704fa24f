"""Inputs a user gets wrong, each ending in one line and exit 2 (no traceback), and the
README forms that used to fail: a run folder as --ckpt, the coco engine on an install
without the mm stack."""
from __future__ import annotations

import sys

import pytest
import torch
from global_helpers import make_imagenet_tree, save_ijepa_pth_tar

from evals.cli import main
from tcjepa.cli.errors import run_cli


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # progress bars share stderr
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def tree_and_weights(tmp_path):
    root = make_imagenet_tree(tmp_path / "in", per_class=(4, 2))
    save_ijepa_pth_tar(tmp_path / "w.pth.tar")
    return root, ["--backbone", "ijepa", "--weights", str(tmp_path / "w.pth.tar"), "--data", str(root),
                  "--device", "cpu", "--epochs", "1", "--lrs", "0.1", "--cache-dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_broken_jpeg_in_train_split_is_one_line_naming_the_file(tree_and_weights, capsys, workers):
    root, argv = tree_and_weights
    broken = sorted((root / "train" / "n02").iterdir())[1]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    err = one_line_error(capsys, ["linear", *argv, "--workers", workers])
    assert str(broken) in err and "not a readable image" in err


@pytest.mark.parametrize("flag", ["--batch-size", "--probe-batch-size", "--epochs"])
def test_zero_sizes_are_refused_by_the_parser(tree_and_weights, capsys, flag):
    _, argv = tree_and_weights
    with pytest.raises(SystemExit) as e:
        main(["linear", *argv, flag, "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be >= 1, got 0" in err and "Traceback" not in err


def test_run_folder_is_its_newest_checkpoint(tmp_path):
    from test_backbones import save_tcjepa_checkpoint

    from evals.backbones import BackboneSpec, CheckpointError, build_backbone
    from tcjepa.train.checkpoint import checkpoint_name

    run = tmp_path / "runs" / "scenes"
    run.mkdir(parents=True)
    save_tcjepa_checkpoint(run / checkpoint_name(7))
    backbone = build_backbone(BackboneSpec("tcjepa", str(run)))
    assert backbone.protocol_info()["weights"].endswith(checkpoint_name(7)) and backbone.protocol_info()["step"] == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither an export folder .* nor a training run folder"):
        build_backbone(BackboneSpec("tcjepa", str(tmp_path / "empty")))


def test_text_cache_mismatch_is_a_user_error(capsys):
    from tcjepa.text.cache import IncompleteTextCacheError, TextCacheError

    def fail():
        raise TextCacheError("data/scenes/text_cache/minilm: text cache does not match the text config "
                             "(max_words 32 != 16)")

    assert run_cli(fail) == 2
    assert capsys.readouterr().err.strip().endswith("(max_words 32 != 16)")
    assert issubclass(IncompleteTextCacheError, RuntimeError)  # callers that caught RuntimeError still do


def test_coco_engine_defaults_to_the_installed_one(monkeypatch, capsys):
    from evals.detection import protocol

    monkeypatch.setitem(sys.modules, "evals.detection.mmdet_adapter", None)  # import fails: no mm stack
    assert protocol.installed_engine() == "torchvision"
    parser = __import__("argparse").ArgumentParser()
    protocol.add_arguments(parser)
    assert parser.parse_args(["--data", "x"]).engine is None
    with pytest.raises(Exception):  # the data folder does not exist; the engine is chosen first
        protocol.run(torch.nn.Identity(), parser.parse_args(["--data", "nowhere"]))
    assert "using torchvision (no mm stack installed)" in capsys.readouterr().out
