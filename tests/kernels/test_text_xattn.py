"""The fused text cross-attention kernel checked against the eager path under Triton's
interpreter: text_xattn_cases.py, run in a child process that starts with TRITON_INTERPRET=1
(see conftest.py for why)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")


def test_fused_kernel_cases_under_the_interpreter():
    cases = Path(__file__).with_name("text_xattn_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def test_auto_takes_the_kernel_where_it_is_meant_to_run():
    from tcjepa.kernels.text_xattn import resolve_impl

    cuda = torch.device("cuda")  # only resolved, never used: no GPU needed
    assert resolve_impl("auto", cuda, torch.bfloat16, 384) == "fused"
    assert resolve_impl("auto", cuda, torch.float32, 384) == "eager"  # fp32 tiles exceed shared memory
    assert resolve_impl("auto", cuda, torch.bfloat16, 1024) == "eager"
    assert resolve_impl("auto", torch.device("cpu"), torch.bfloat16, 384) == "eager"
    assert resolve_impl("eager", cuda) == "eager"
    assert resolve_impl("fused", torch.device("meta")) == "eager"  # the benchmark's FLOP count
    with pytest.raises(ValueError, match="takes bf16 / fp16 queries"):
        resolve_impl("fused", cuda, torch.float32, 384)
