"""How a command ends when torchrun started it as one of several ranks.

Leaving the process group is not enough: gloo's worker threads can outlive
``destroy_process_group`` and abort a rank whose work is done while the interpreter finalizes
("terminate called without an active exception", SIGABRT; pytorch PR 179291), and torchrun then
reports the whole run as failed. Seen here after finished 2-rank training and mmseg runs. So a
rank flushes what it wrote and exits without finalization. Nothing here imports torch unless
torchrun started the process (``--help`` stays light).
"""
from __future__ import annotations

import logging
import os
import sys


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def leave_process_group() -> None:
    """Destroy this rank's process group, if it joined one."""
    if launched_by_torchrun():
        from ..train.distributed import cleanup

        cleanup()


def exit_rank(status: int) -> int:
    """The command's exit status. Under torchrun: leave the group, flush logs and stdio, and
    end the process with ``status`` here; otherwise just return it."""
    if not launched_by_torchrun():
        return status
    leave_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
