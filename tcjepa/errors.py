"""The project's one family of user errors.

A ``UserError`` is something the user fixes (a config value, a file, a folder): its message
names the file or setting and what is wrong, and the command-line tools print it as one line
with exit code 2 instead of a traceback. Anything else is a bug and keeps its traceback.
Each layer subclasses it once (``ConfigError``, ``DataError``, ``CheckpointError``,
``TrainingError``, ``ExportError``; ``evals`` re-exports ``UserError`` and ``CheckpointError``).
It is a ``ValueError``, and the two that were ``RuntimeError`` stay one too.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message is one line naming the file or setting."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written or read, or weights that do not fit the model they
    claim to be (missing or unexpected keys, shapes); the message names the file."""


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (non-finite loss, a checkpoint it cannot write, ...); the message
    says where it stopped and which checkpoint is the last good one."""
