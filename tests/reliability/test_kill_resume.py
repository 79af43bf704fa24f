"""kill -9 at any point, then train.resume=auto: the result is bit-identical to a run never killed."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from reliability_helpers import (
    LAUNCHER, REPO, assert_same_run, assert_same_weights, child_env, run_child, tail, tiny_overrides, train_in_process,
)

from tcjepa.train.checkpoint import LATEST_POINTER, checkpoint_name, list_checkpoints

pytestmark = pytest.mark.slow


def kill_then_resume(scenes, out, reference, fault: dict, **extra):
    overrides = tiny_overrides(scenes, out, **extra)
    killed = run_child(overrides, **fault)
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    train_in_process(overrides)
    assert_same_run(out, reference)


def test_kill_between_checkpoints(scenes, reference_run, tmp_path):
    """Killed after step 3 (checkpoint 2 on disk): resumes from 2, redoes step 3."""
    kill_then_resume(scenes, tmp_path, reference_run, {"RELIABILITY_KILL_AT_STEP": 3})


def test_kill_during_checkpoint_write(scenes, reference_run, tmp_path, caplog):
    """Killed with half of checkpoint 4 in the temp file: checkpoint 2 is intact and used,
    the orphaned temp file is never mistaken for a checkpoint, and rows 3-4 of metrics.jsonl
    (logged before the kill) are rewritten, not duplicated."""
    overrides = tiny_overrides(scenes, tmp_path)
    killed = run_child(overrides, RELIABILITY_KILL_IN_CKPT_WRITE=4)
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert (tmp_path / LATEST_POINTER).read_text().strip() == checkpoint_name(2)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half-written temp file
    with caplog.at_level(logging.INFO, logger="tcjepa.train"):
        train_in_process(overrides)
    assert f"resumed from {tmp_path / checkpoint_name(2)} at step 2" in caplog.text
    assert_same_run(tmp_path, reference_run)


def test_kill_after_checkpoint_rename_before_latest_pointer(scenes, reference_run, tmp_path):
    """Checkpoint 6 renamed into place but ``latest`` still names 4: the run resumes from a
    consistent checkpoint and ends identical."""
    overrides = tiny_overrides(scenes, tmp_path)
    killed = run_child(overrides, RELIABILITY_KILL_BEFORE_LATEST=6)
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    assert (tmp_path / checkpoint_name(6)).is_file()
    assert (tmp_path / LATEST_POINTER).read_text().strip() == checkpoint_name(4)
    train_in_process(overrides)
    assert_same_run(tmp_path, reference_run)


def test_external_kill_with_a_loader_worker(scenes, reference_run, tmp_path):
    """A real ``kill -9`` from outside, whenever step 3 has been logged, with data.num_workers=1
    (a worker process alive, batches prefetched past the checkpoint); resumed with a worker too."""
    overrides = tiny_overrides(scenes, tmp_path, data__num_workers=1)
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *overrides], env=child_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and sum('"loss"' in ln for ln in metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        try:  # the orphaned loader worker (same session/group as the child we started)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = max(json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.strip())
    assert 3 <= killed_at < 8
    train_in_process(overrides)
    assert_same_run(tmp_path, reference_run)


def test_clean_stop_and_resume_three_times(scenes, reference_run, tmp_path):
    """--max-steps-this-run style stops (3 + 2 + 3 steps) give the same run as one go."""
    for n in (3, 2, 3):
        summary = train_in_process(tiny_overrides(scenes, tmp_path), max_steps_this_run=n)
    assert summary.steps == 8
    assert_same_weights(tmp_path, reference_run)  # a clean stop also logs the probe at its stop step

