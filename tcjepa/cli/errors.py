"""User errors end a command with one line on stderr and exit code 2, not a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ..errors import UserError


def user_error_types() -> tuple[type, ...]:
    """Errors that mean 'fix your input': the project's UserError family, and a missing file."""
    return (UserError, FileNotFoundError)


def run_cli(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - decide below whether it is the user's to fix
        if isinstance(e, user_error_types()) and not os.environ.get("TCJEPA_TRACEBACK"):
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, always
            return 2
        raise
