"""Where a training step's time goes: torch.profiler over a few steps, kernels grouped by kind.

On CUDA the device kernels are grouped by name (cuBLAS / CUTLASS GEMMs, flash / memory-efficient
attention, fused AdamW and the foreach EMA, ...); on CPU the aten operators are, by self time.
The summary table is the profile in short (time per kernel category); the full
top-kernel list goes to a text file beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType

from .common import command_line
from torch.profiler import ProfilerActivity, profile

# First match wins; names are lower-cased kernel names (CUDA) or aten operator names (CPU).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_mha")),
    ("optimizer + EMA", ("adam", "foreach", "multi_tensor", "lerp")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "aten::mm", "aten::addmm", "aten::bmm", "matmul",
                "aten::linear", "conv")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("copy / memset", ("memcpy", "memset", "copy_", "aten::to", "cat")),
    ("gather / scatter / index", ("gather", "scatter", "index")),
    ("elementwise / reduce", ("elementwise", "vectorized", "reduce", "gelu", "softmax", "mul", "add", "div",
                              "sum", "mean", "pow", "sqrt", "exp", "where", "fill", "clamp")),
]


def category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


def _self_time_us(evt: Any, on_device: bool) -> float:
    if on_device:
        return float(getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0) or 0)
    return float(evt.self_cpu_time_total)


def profile_steps(step: Callable[[int], Any], steps: int, device: torch.device) -> tuple[list[dict[str, Any]], str]:
    """Run ``step(i)`` ``steps`` times under the profiler. Returns per-category rows (ms per step,
    share of the profiled time, kernel count) and a text list of the 25 costliest entries."""
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        if on_device:
            torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages()
              if (e.device_type == DeviceType.CUDA) == on_device and _self_time_us(e, on_device) > 0]
    if not on_device:  # CPU: aten operators only (python / profiler frames would double count)
        events = [e for e in events if e.key.startswith("aten::")]
    total = sum(_self_time_us(e, on_device) for e in events) or 1.0
    groups: dict[str, dict[str, Any]] = {}
    for e in events:
        label = category(e.key)
        g = groups.setdefault(label, {"category": label, "ms_per_step": 0.0, "calls_per_step": 0.0})
        g["ms_per_step"] += _self_time_us(e, on_device) / 1e3 / steps
        g["calls_per_step"] += e.count / steps
    rows = sorted(groups.values(), key=lambda r: -r["ms_per_step"])
    for r in rows:
        r["share"] = r["ms_per_step"] * 1e3 * steps / total
    top = sorted(events, key=lambda e: -_self_time_us(e, on_device))[:25]
    lines = [f"{'ms/step':>9}  {'calls':>6}  {'category':<24}  name"]
    lines += [f"{_self_time_us(e, on_device) / 1e3 / steps:9.3f}  {e.count / steps:6.1f}  {category(e.key):<24}  {e.key[:140]}"
              for e in top]
    return rows, "\n".join(lines)


def write_profile(out_dir: str | Path, stem: str, top: str, meta: dict[str, Any]) -> Path:
    """The top-kernel list, under a line naming the device, torch, commit and command."""
    path = Path(out_dir) / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {meta['device']} | torch {meta['torch']} | commit {meta['commit']}"
              f"{' (dirty)' if meta.get('dirty') else ''} | {command_line(meta['argv'])}")
    path.write_text(header + "\n" + top + "\n")
    return path
