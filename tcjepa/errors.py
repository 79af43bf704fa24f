"""The project's one family of user errors.

A ``UserError`` is something the user fixes (a config value, a file, a folder): its message
names the file or setting and what is wrong, and the command-line tools print it as one line
with exit code 2 instead of a traceback. Anything else is a bug and keeps its traceback.
Each layer subclasses it once (``ConfigError``, ``DataError``, ``CheckpointError``, ...);
the subclasses also keep the built-in base they always had, so ``except ValueError`` and
``except RuntimeError`` callers are unaffected.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message is one line naming the file or setting."""


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (non-finite loss, a checkpoint it cannot write, ...); the message
    says where it stopped and which checkpoint is the last good one."""
