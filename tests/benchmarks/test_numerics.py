"""Numerics of the real training step on CPU: bf16 autocast vs fp32, torch.compile vs eager.

Tolerances are the ones docs/PERFORMANCE.md states (benchmarks/numerics.py): relative
difference of window-mean losses, so that single-step rounding noise averages out but drift
does not, plus the first step's loss.
"""
import pytest
import torch

from benchmarks.numerics import (BF16_FIRST_TOL, BF16_WINDOW_TOL, COMPILE_FIRST_TOL, COMPILE_WINDOW_TOL, compare,
                                 loss_curve)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def bf16_and_fp32_curves(steps: int, window: int) -> tuple[list[float], list[float]]:
    """Both loss curves, after checking they agree within the stated tolerances."""
    fp32 = loss_curve("vit_pico", "tc_n8_xattn", steps, precision="fp32")
    bf16 = loss_curve("vit_pico", "tc_n8_xattn", steps, precision="bf16")
    r = compare(bf16, fp32, window=window)
    assert r["first_rel"] <= BF16_FIRST_TOL, r
    assert r["max_window_rel"] <= BF16_WINDOW_TOL, r
    return bf16, fp32


def test_bf16_autocast_tracks_fp32_short():
    bf16, fp32 = bf16_and_fp32_curves(30, window=10)
    assert bf16 != fp32  # autocast did engage


@pytest.mark.slow
def test_bf16_autocast_tracks_fp32_200_steps():
    bf16, fp32 = bf16_and_fp32_curves(200, window=25)
    assert sum(fp32[-25:]) < sum(fp32[:25])  # it trains: the comparison is not between two flat lines


@pytest.mark.slow
def test_compiled_matches_eager():
    # One batch shape (pool=1): every new context length would be another CPU compilation.
    eager = loss_curve("vit_pico", "tc_n8_xattn", 5, precision="fp32", pool=1)
    compiled = loss_curve("vit_pico", "tc_n8_xattn", 5, precision="fp32", pool=1, compile_model=True)
    r = compare(compiled, eager, window=5)
    assert r["first_rel"] <= COMPILE_FIRST_TOL, r
    assert r["max_window_rel"] <= COMPILE_WINDOW_TOL, r
