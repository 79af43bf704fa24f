"""Start a test driver script as its own process, or as several under torchrun (gloo on CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict:
    """This checkout first on the path, one thread per process (the same kernels everywhere)."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def driver_command(script: Path, *args: str, ranks: int = 1) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    return [*launcher, str(script), *map(str, args)]


class DriverFailed(AssertionError):
    """A driver exited non-zero; the message holds its command, status and output's tail."""


def run_driver(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a driver command; on failure raise with what it printed (``check=True`` would keep
    the output inside the exception, where pytest's report does not show it)."""
    run = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise DriverFailed(f"{' '.join(command)}\nexited {run.returncode}\n"
                           f"--- stdout (tail) ---\n{run.stdout[-3000:]}\n--- stderr (tail) ---\n{run.stderr[-6000:]}")
    return run
