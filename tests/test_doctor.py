"""tcjepa-doctor reports this machine and exits 0 where everything needed is installed."""
from __future__ import annotations

import subprocess
import sys

from tcjepa import doctor


def test_doctor_reports_every_component():
    result = subprocess.run([sys.executable, "-m", "tcjepa.doctor"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line[5:26].strip(): line for line in result.stdout.splitlines() if line[:5].strip() in ("ok", "--", "FAIL")}
    for name in ("python", "torch", "GPU", "triton", "timm", "transformers", "mm stack", "text encoder files"):
        assert name in lines, result.stdout
    import torch

    assert torch.__version__.split("+")[0] in lines["torch"]
    assert lines["text encoder files"].startswith("ok") and "verified" in lines["text encoder files"]
    assert lines["GPU"].startswith("ok" if torch.cuda.is_available() else "--")


def test_version_off_the_lock_is_a_failure_with_its_fix():
    pins = doctor.locked_versions()
    assert pins["torch"] == "2.14.1" and pins["timm"].startswith("1.0.")
    found = doctor.package_finding("timm", "timm", {"timm": "0.0.1"})
    assert not found.ok and "the lock pins 0.0.1" in found.detail
    assert "FAIL" in found.line() and "fix: make install" in found.line()
    missing = doctor.package_finding("x", "no-such-distribution-tcjepa", pins, needed=False)
    assert not missing.ok and missing.line().startswith("--")
