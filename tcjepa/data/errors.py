"""The one exception type of the data layer.

A ``DataError`` is a problem the user can fix (a missing image, a malformed caption line, a
folder in the wrong layout). Its message names the file, the line when there is one, and the
fix, so the command-line tools print it as one line without a traceback.
"""
from __future__ import annotations

from ..errors import UserError


class DataError(UserError, ValueError):
    """Bad input data; the message names the file (and line) and what to do about it."""


SKIP_HINT = "fix or remove it, or set data.skip_bad_samples=true to skip and count bad samples"
