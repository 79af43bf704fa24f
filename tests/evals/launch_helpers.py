"""Start a test driver script as its own process, or as several under torchrun (gloo on CPU)."""
from __future__ import annotations

import os
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
