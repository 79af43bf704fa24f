"""The pure-torch segmentation head: killed mid-training and resumed, it ends with the
weights of an uninterrupted run; under 2 gloo ranks it trains a DDP head."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from dense_helpers import write_ade_tree
from head_training_driver import train
from launch_helpers import driver_command, run_driver, subprocess_env

from tcjepa.train.checkpoint import load_checkpoint

DRIVER = Path(__file__).with_name("head_training_driver.py")


def _train(data: Path, work: Path, out: Path, *extra: str, ranks: int = 1) -> None:
    run_driver(driver_command(DRIVER, data, work, out, *extra, ranks=ranks), timeout=300)


@pytest.mark.slow
def test_killed_head_training_resumes_to_the_uninterrupted_weights(tmp_path):
    data = write_ade_tree(tmp_path / "ade", n_train=4, n_val=1, size=(40, 40))
    whole = train(data, tmp_path / "whole").state_dict()
    checkpoint = tmp_path / "killed" / "head_last.pt"
    proc = subprocess.Popen(driver_command(DRIVER, data, checkpoint.parent, tmp_path / "x.pt", "--delay", "0.15"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= 6):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    assert 6 <= killed_at < 24 and not (tmp_path / "x.pt").exists()
    resumed = train(data, checkpoint.parent, resume=True).state_dict()
    assert load_checkpoint(checkpoint)["step"] == 24
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
    fresh = train(data, checkpoint.parent, iters=3).state_dict()  # without resume the checkpoint is ignored
    assert not torch.equal(fresh["conv_seg.weight"], whole["conv_seg.weight"])


@pytest.mark.slow
def test_two_gloo_ranks_train_one_ddp_head(tmp_path):
    data = write_ade_tree(tmp_path / "ade", n_train=4, n_val=1, size=(40, 40))
    _train(data, tmp_path / "work", tmp_path / "head.pt", "--iters", "6", ranks=2)
    state = load_checkpoint(tmp_path / "work" / "head_last.pt")
    assert state["step"] == 6 and not any(k.startswith("module.") for k in state["head"])
    assert torch.equal(torch.load(tmp_path / "head.pt")["conv_seg.weight"], state["head"]["conv_seg.weight"])
    assert len(state["random_streams"]) == 2  # each rank's own streams, to resume each one
    assert not torch.equal(state["random_streams"][0]["generator"], state["random_streams"][1]["generator"])
