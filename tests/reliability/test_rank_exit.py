"""tcjepa.cli.rank_exit: a torchrun rank ends with its status, its output flushed, and no
interpreter finalization (where gloo's threads can abort a finished rank); any other process
just gets the status back."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import atexit, sys
atexit.register(lambda: print("finalized"))
from tcjepa.cli.rank_exit import exit_rank
print("torch imported" if "torch" in sys.modules else "no torch", end=" ")
status = exit_rank(3)
print("returned", status, end=" ")
sys.exit(status + 1)
"""


def _run(world_size: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world_size:
        env["WORLD_SIZE"] = world_size
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)


def test_outside_torchrun_the_status_comes_back_and_the_process_ends_normally():
    run = _run("")
    assert run.returncode == 4, run.stderr
    assert run.stdout.split() == ["no", "torch", "returned", "3", "finalized"]


def test_a_torchrun_rank_exits_with_its_status_flushed_and_unfinalized():
    run = _run("2")
    assert run.returncode == 3, run.stderr
    assert run.stdout == "no torch "  # printed before the exit (flushed); no atexit handler ran
