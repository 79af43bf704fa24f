"""Child-process entry for the fault-injection tests: ``python _launcher.py key=value ...``.

Runs ``tcjepa.train.loop.train`` on the given overrides, after installing at most one fault
chosen by an environment variable (the hooks live here, never in product code):

- RELIABILITY_KILL_AT_STEP=N: SIGKILL itself right after optimizer step N (before its
  checkpoint, if N is a checkpoint step);
- RELIABILITY_KILL_IN_CKPT_WRITE=N: SIGKILL itself half-way through writing checkpoint N
  (inside the atomic writer: half the bytes are in the temp file, nothing renamed yet);
- RELIABILITY_KILL_BEFORE_LATEST=N: SIGKILL itself after checkpoint N is renamed into place
  but before the ``latest`` pointer is updated;
- RELIABILITY_NAN_AT_FORWARD=N: training forward number N (1-based) returns a NaN loss.

Under torchrun, RELIABILITY_FAULT_RANK=R installs the fault in rank R only; the other ranks
train on as usual (until a dead peer stops them, or torchrun tears them down).
"""
from __future__ import annotations

import io
import logging
import os
import signal
import sys
from pathlib import Path

import torch


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    from tcjepa.config import load_config
    from tcjepa.train import checkpoint as ckpt_io
    from tcjepa.train.loop import train

    cfg = load_config(None, argv)
    on_step = None
    rank = os.environ.get("RANK", "0")
    if os.environ.get("RELIABILITY_FAULT_RANK", rank) != rank:
        train(cfg)  # not the rank to fault
        return 0

    if "RELIABILITY_KILL_AT_STEP" in os.environ:
        kill_step = int(os.environ["RELIABILITY_KILL_AT_STEP"])

        def on_step(step: int) -> None:
            if step == kill_step:
                die()

    if "RELIABILITY_KILL_IN_CKPT_WRITE" in os.environ:
        kill_step = int(os.environ["RELIABILITY_KILL_IN_CKPT_WRITE"])
        real_serialize = ckpt_io._serialize

        def serialize(state, f):
            if state.get("step") != kill_step:
                return real_serialize(state, f)
            buf = io.BytesIO()
            real_serialize(state, buf)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()

        ckpt_io._serialize = serialize

    if "RELIABILITY_KILL_BEFORE_LATEST" in os.environ:
        kill_step = int(os.environ["RELIABILITY_KILL_BEFORE_LATEST"])
        real_atomic_write = ckpt_io.atomic_write

        def atomic_write(path, write):
            path = Path(path)
            if path.name == ckpt_io.LATEST_POINTER and (path.parent / ckpt_io.checkpoint_name(kill_step)).is_file():
                die()
            return real_atomic_write(path, write)

        ckpt_io.atomic_write = atomic_write

    if "RELIABILITY_NAN_AT_FORWARD" in os.environ:
        from reliability_helpers import poisoned

        from tcjepa.models.jepa import JEPA

        JEPA.forward = poisoned(JEPA.forward, {int(os.environ["RELIABILITY_NAN_AT_FORWARD"])})

    train(cfg, on_step=on_step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
