"""Under torchrun each rank captions its own chunks and rank 0 merges them in input order:
the same file as one process writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcjepa.cli.data import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(scenes, models, tmp_path, captions_args):
    args = lambda out: captions_args(scenes / "images" / "train", models["blip"], out, "--chunk-size", "2")  # noqa: E731
    assert main(args(tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tcjepa.cli.data", *args(tmp_path / "two")]
    ran = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "two" / "captions.jsonl").read_text() == (tmp_path / "one" / "captions.jsonl").read_text()
    assert '"world_size": 2' in (tmp_path / "two" / "captions_meta.json").read_text()
