"""scripts/stage.sh, the budgeted stages of the GPU scripts (benchmarks/run_gpu.sh,
scripts/studies/long_horizon_gpu.sh), run in bash on CPU."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source scripts/stage.sh\n{script}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_a_stage_runs_reports_and_returns_0_whatever_its_command_returns():
    run = _bash('end=$((SECONDS + 100)); stage one 30 bash -c "echo hi; exit 3"; echo "status $?"',
                AFTER_STAGE="echo after")
    lines = run.stdout.splitlines()
    assert lines[:2] == ["== one (up to 30s): bash -c echo hi; exit 3", "hi"] and lines[3:] == ["after", "status 0"]
    assert re.fullmatch(r"== one: rc=3 in [01]s", lines[2])  # whole seconds: a boundary may fall inside


def test_stages_not_named_or_past_the_budget_return_1_without_running():
    run = _bash('end=$((SECONDS + 100)); stage one 30 echo ran; echo "status $?"; '
                'end=$((SECONDS + 10)); stage two 30 echo ran; echo "status $?"', STAGES="two")
    assert run.stdout.splitlines() == ["status 1", "== two: skipped, budget spent", "status 1"]


def test_a_stage_is_cut_at_its_cap():
    run = _bash('end=$((SECONDS + 100)); stage slow 1 sleep 30; echo "status $?"', STAGE_MIN_S="1")
    assert "== slow: rc=124" in run.stdout and run.stdout.endswith("status 0\n")
