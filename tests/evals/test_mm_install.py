"""scripts/install_mm.sh: a second run finds the stack and returns at once."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_mm.sh"


@pytest.mark.mm
@pytest.mark.slow
def test_install_mm_is_idempotent():
    done = subprocess.run(["bash", str(SCRIPT), sys.executable], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr


def test_install_mm_fails_clearly_without_a_python(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "no-python")], capture_output=True, text=True)
    assert done.returncode != 0 and "is not an executable" in done.stderr
