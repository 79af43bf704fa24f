"""Killed mid-run (SIGKILL) and started again with the same command, the run
ends with exactly the captions of an uninterrupted run: none lost, none duplicated."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcjepa.cli.data import main

REPO = Path(__file__).resolve().parents[2]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tcjepa.cli.data", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after_chunks(proc: subprocess.Popen, work: Path, chunks: int, timeout: float = 120) -> int:
    """SIGKILL ``proc`` as soon as ``work`` holds ``chunks`` finished chunks; returns how many it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(work.glob("chunk-*.jsonl"))) >= chunks:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed: {proc.communicate()}"
    return len(list(work.glob("chunk-*.jsonl")))


@pytest.mark.slow
def test_killed_then_resumed_gives_the_uninterrupted_captions(scenes, models, tmp_path, captions_args):
    images = scenes / "images"  # train/ and val/: 10 images, one chunk each
    args = lambda out: captions_args(images, models["blip"], out, "--chunk-size", "1", "--batch-size", "1")  # noqa: E731
    assert main(args(tmp_path / "reference")) == 0
    out = tmp_path / "resumed"
    done = _kill_after_chunks(_start(args(out)), out / ".captions-work", 2)
    assert 2 <= done < 10 and not (out / "captions.jsonl").exists()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    finished = subprocess.run([sys.executable, "-m", "tcjepa.cli.data", *args(out)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"resuming, {done} of 10 chunks already written" in finished.stdout
    assert (out / "captions.jsonl").read_text() == (tmp_path / "reference" / "captions.jsonl").read_text()
    assert not list(out.rglob("*.tmp")) and not (out / ".captions-work").exists()
