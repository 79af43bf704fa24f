"""Failing checkpoint writes, corrupted checkpoints and non-finite losses inside a real training run."""
from __future__ import annotations

import errno
import json
import logging
import math

import pytest
import torch
from reliability_helpers import (STEPS, assert_same_run, assert_same_weights, logged_rows, poisoned, the_error_line,
                                 tiny_overrides, train_in_process)

from tcjepa.cli.train import main as train_main
from tcjepa.models.jepa import JEPA
from tcjepa.train import checkpoint as ckpt_io
from tcjepa.train.checkpoint import CheckpointError, checkpoint_name, list_checkpoints, load_checkpoint
from tcjepa.train.loop import TrainingError


def fail_writing_checkpoint(monkeypatch, step: int):
    """Checkpoint ``step`` dies half-way with ENOSPC, as a full disk would make it."""
    real = ckpt_io._serialize

    def serialize(state, f):
        if state.get("step") == step:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, f)

    monkeypatch.setattr(ckpt_io, "_serialize", serialize)


# ----------------------------------------------------------------------------- (b) failed writes


def test_disk_full_during_checkpoint_write(scenes, reference_run, tmp_path, monkeypatch):
    overrides = tiny_overrides(scenes, tmp_path)
    fail_writing_checkpoint(monkeypatch, 4)
    with pytest.raises(TrainingError) as e:
        train_in_process(overrides)
    msg = str(e.value)
    assert str(tmp_path / checkpoint_name(4)) in msg and "step 4" in msg and "No space left" in msg
    assert f"last good checkpoint: {tmp_path / checkpoint_name(2)}" in msg
    assert load_checkpoint(tmp_path / checkpoint_name(2))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # temp file removed
    monkeypatch.undo()  # space freed: the run resumes and ends as if nothing happened
    train_in_process(overrides)
    assert_same_run(tmp_path, reference_run)


def test_disk_full_is_one_line_from_the_cli(scenes, tmp_path, monkeypatch, capsys):
    fail_writing_checkpoint(monkeypatch, 2)
    assert train_main(tiny_overrides(scenes, tmp_path, optim__max_steps=2)) == 2
    err = the_error_line(capsys.readouterr().err)
    assert err.startswith("error: could not write checkpoint") and "last good checkpoint: none yet" in err


# ----------------------------------------------------------------------------- (c) corrupted files


@pytest.fixture
def stopped_at_4(scenes, tmp_path):
    """A run stopped cleanly after step 4: checkpoints 2 and 4 on disk."""
    overrides = tiny_overrides(scenes, tmp_path)
    train_in_process(overrides, max_steps_this_run=4)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    return overrides


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "empty"])
def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint(stopped_at_4, reference_run, tmp_path, caplog, damage):
    newest = tmp_path / checkpoint_name(4)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 3])
    elif damage == "flip_bytes":
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(newest)):
        load_checkpoint(newest) if damage != "flip_bytes" else _strict_load(newest)
    with caplog.at_level(logging.INFO):
        train_in_process(stopped_at_4)
    assert f"{newest} is corrupted" in caplog.text
    assert f"resumed from {tmp_path / checkpoint_name(2)} at step 2" in caplog.text
    assert_same_run(tmp_path, reference_run)


def _strict_load(path):
    # A flipped byte inside a tensor payload can still unpickle; the CRC check is what catches it.
    reason = ckpt_io._looks_intact(path)
    assert reason and "CRC" in reason
    raise CheckpointError(f"{path}: {reason}")


def test_explicit_resume_of_a_truncated_file_is_an_error_naming_it(stopped_at_4, tmp_path, capsys):
    newest = tmp_path / checkpoint_name(4)
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{newest}: cannot read checkpoint"):
        train_in_process(stopped_at_4 + [f"train.resume={newest}"])
    assert train_main(stopped_at_4 + [f"train.resume={newest}"]) == 2
    err = the_error_line(capsys.readouterr().err)
    assert str(newest) in err and "truncated or corrupted" in err


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(stopped_at_4, tmp_path):
    for _, p in list_checkpoints(tmp_path):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="every checkpoint is corrupted"):
        train_in_process(stopped_at_4)


def test_intact_file_that_is_not_a_training_checkpoint(stopped_at_4, tmp_path):
    """A zip-valid newest file holding something else (an export-like dict) names the file and what is missing."""
    newest = tmp_path / checkpoint_name(4)
    ckpt_io.save_checkpoint(newest, {"target_encoder": {"w": torch.zeros(2)}, "step": 4})
    with pytest.raises(CheckpointError, match=f"{newest}: not a training checkpoint"):
        train_in_process(stopped_at_4)


def test_garbage_latest_pointer_is_ignored(stopped_at_4, reference_run, tmp_path):
    (tmp_path / ckpt_io.LATEST_POINTER).write_text("../../etc/passwd\n")
    train_in_process(stopped_at_4)
    assert_same_weights(tmp_path, reference_run)


# ----------------------------------------------------------------------------- (d) NaN / Inf


def poison_forward(monkeypatch, calls: set[int], value=float("nan")):
    """Training forward number ``n`` (1-based) in ``calls`` returns a non-finite loss."""
    monkeypatch.setattr(JEPA, "forward", poisoned(JEPA.forward, calls, value))


def test_nan_policy_stop_names_step_and_last_good_checkpoint(scenes, tmp_path, monkeypatch, capsys):
    poison_forward(monkeypatch, {5})
    with pytest.raises(TrainingError) as e:
        train_in_process(tiny_overrides(scenes, tmp_path, train__nan_policy="stop"))
    msg = str(e.value)
    assert "non-finite loss (nan) at step 5" in msg
    assert f"last good checkpoint: {tmp_path / checkpoint_name(4)}" in msg
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]  # nothing written after the NaN


def test_inf_loss_stops_the_cli_with_one_line(scenes, tmp_path, monkeypatch, capsys):
    poison_forward(monkeypatch, {1}, float("inf"))
    assert train_main(tiny_overrides(scenes, tmp_path, train__nan_policy="stop")) == 2
    err = the_error_line(capsys.readouterr().err)
    assert err == "error: non-finite loss (inf) at step 1; last good checkpoint: none yet"


def test_nan_policy_skip_skips_and_continues(scenes, tmp_path, monkeypatch, caplog):
    poison_forward(monkeypatch, {3, STEPS})  # a middle step and the very last one
    seen = []
    with caplog.at_level(logging.WARNING):
        summary = train_in_process(tiny_overrides(scenes, tmp_path, train__nan_policy="skip"), on_step=seen.append)
    assert summary.steps == STEPS and math.isfinite(summary.final_loss)
    assert seen == [1, 2, 4, 5, 6, 7]  # no optimizer step on a poisoned batch
    assert caplog.text.count("skipping this step (train.nan_policy=skip)") == 2
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows if "loss" in r}) == [1, 2, 4, 5, 6, 7]
    # The run still ends with its final checkpoint, so a resume does not redo the skipped last step.
    assert summary.last_checkpoint == str(tmp_path / checkpoint_name(STEPS))
    state = load_checkpoint(tmp_path / checkpoint_name(STEPS))
    assert state["step"] == STEPS
    assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
               for v in state[part].values() if v.is_floating_point())


# ----------------------------------------------------------------------------- (e) logs and compile


def test_resume_after_a_cut_off_metrics_line(stopped_at_4, reference_run, tmp_path, caplog):
    """A crash (or power loss) mid-append leaves half a JSON line; the resume drops it."""
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss_pr')
    with caplog.at_level(logging.WARNING):
        train_in_process(stopped_at_4)
    assert "dropping the cut-off last line" in caplog.text
    assert not list(tmp_path.glob("*metrics.jsonl*.tmp"))
    assert_same_weights(tmp_path, reference_run)
    # Every step's losses once, as uninterrupted (a clean stop adds one probe-monitor row).
    losses = [r for r in logged_rows(tmp_path) if "loss" in r]
    assert losses == [r for r in logged_rows(reference_run) if "loss" in r]


def test_a_damaged_metrics_line_mid_file_is_an_error_naming_it(tmp_path):
    from tcjepa.train.monitors import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not a JSON metrics row"):
        read_jsonl(path, drop_cut_off_tail=True)


def test_compile_failure_falls_back_to_eager(scenes, reference_run, tmp_path, monkeypatch, caplog):
    def broken_compile(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("backend compiler failed: no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        train_in_process(tiny_overrides(scenes, tmp_path, train__compile="true"))
    assert caplog.text.count("torch.compile failed at step 0 (RuntimeError: backend compiler failed") == 1
    assert "continuing in eager mode" in caplog.text
    assert_same_weights(tmp_path, reference_run)
