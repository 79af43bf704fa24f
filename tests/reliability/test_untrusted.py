"""Untrusted checkpoints never run code: every entry point refuses a malicious pickle by default."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from reliability_helpers import VENV_BIN, child_env, the_error_line, tiny_overrides, train_in_process

from evals.cli import main as eval_main
from tcjepa.cli.export import main as export_main
from tcjepa.cli.train import main as train_main
from tcjepa.train.checkpoint import CheckpointError, checkpoint_name, load_checkpoint


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(params=["torch_zip", "raw_pickle"])
def evil(request, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    state = {"encoder": {}, "target_encoder": {}, "step": 1, "payload": Payload(marker)}
    if request.param == "torch_zip":
        torch.save(state, path)
    else:  # a pre-zip pickle stream, as very old torch.save or plain pickle.dump writes it
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path, marker


def assert_refused(message: str, path) -> None:
    assert str(path) in message and "refused to load" in message
    assert "allow_pickle" in message or "allow-pickle" in message


def test_load_checkpoint_refuses(evil):
    path, marker = evil
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_refused(str(e.value), path)
    assert not marker.exists()


def test_train_resume_refuses(evil, scenes, tmp_path, capsys):
    path, marker = evil
    assert train_main(tiny_overrides(scenes, tmp_path / "run", train__resume=str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert_refused(err, path)
    assert not marker.exists()


def test_export_refuses(evil, tmp_path, capsys):
    path, marker = evil
    assert export_main([str(path), str(tmp_path / "export")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert_refused(err, path)
    assert not marker.exists() and not (tmp_path / "export" / "model.safetensors").exists()


def test_eval_refuses(evil, scenes, capsys):
    path, marker = evil
    data = str(scenes / "imagenet")
    for argv in (["linear", "--ckpt", str(path), "--data", data, "--device", "cpu"],
                 ["linear", "--backbone", "ijepa", "--weights", str(path), "--data", data, "--device", "cpu"]):
        assert eval_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tcjepa-eval: error:") and "\n" not in err and str(path) in err
        assert not marker.exists()


@pytest.mark.slow
def test_console_scripts_refuse_end_to_end(tmp_path, scenes):
    """The installed tcjepa-export and tcjepa-eval, as a user runs them."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"target_encoder": {}, "payload": Payload(marker)}, path)
    for cmd in (["tcjepa-export", str(path), str(tmp_path / "out")],
                ["tcjepa-eval", "linear", "--ckpt", str(path), "--data", str(scenes / "imagenet"), "--device", "cpu"]):
        proc = subprocess.run([str(VENV_BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              env=child_env(), timeout=120)
        assert proc.returncode != 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr and str(path) in lines[0], proc.stderr
        assert not marker.exists()


def test_allow_pickle_is_an_explicit_opt_in_for_legacy_checkpoints(scenes, tmp_path):
    """A checkpoint holding a harmless non-tensor object (numpy scalar, as old code saved) resumes
    only with train.allow_pickle=true."""
    overrides = tiny_overrides(scenes, tmp_path, optim__max_steps=4)
    train_in_process(overrides, max_steps_this_run=2)
    ckpt = tmp_path / checkpoint_name(2)
    state = load_checkpoint(ckpt)
    state["legacy_loss"] = np.float64(0.5)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="train.allow_pickle=true"):
        train_in_process(overrides)
    summary = train_in_process(overrides + ["train.allow_pickle=true"])
    assert summary.steps == 4
