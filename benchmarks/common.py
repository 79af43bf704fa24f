"""Shared helpers: run metadata (device, versions, commit), JSON / CSV output, text tables."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; first
# match on the device name wins. Unknown devices (and CPUs) get no MFU unless --peak-tflops.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("A10G", 70.0), ("L4", 121.0),
]


def git_commit() -> dict[str, Any]:
    """Commit of the working tree (read-only git calls); ``dirty`` when files differ from it."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    if os.environ.get("TCJEPA_COMMIT"):
        # A copy of a committed tree whose .git is missing or stale (a remote GPU machine):
        # the launcher names the commit.
        return {"commit": os.environ["TCJEPA_COMMIT"], "dirty": os.environ.get("TCJEPA_DIRTY") == "1"}
    commit = run("rev-parse", "HEAD")
    # Code only: results being rewritten by this very run do not make the tree dirty.
    dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")) if commit else None
    return {"commit": commit or "unknown", "dirty": dirty}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def metadata(device: torch.device, argv: Sequence[str] = ()) -> dict[str, Any]:
    meta = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": _repo_relative_script(list(argv)),
        **git_commit(),
    }
    try:
        import timm

        meta["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_memory_gib"] = round(props.total_memory / 2**30, 2)
    return meta


def _repo_relative_script(argv: list[str]) -> list[str]:
    # `python -m benchmarks.x` puts the script's absolute path in argv[0]; recorded as is, it
    # would name the folder of one machine's checkout in the committed results.
    if argv and Path(argv[0]).is_absolute():
        try:
            argv[0] = Path(argv[0]).resolve().relative_to(REPO.resolve()).as_posix()
        except ValueError:
            pass
    return argv


def command_line(argv: list[str]) -> str:
    """The command a reader can re-run: ``python -m benchmarks.<name> ...`` for a benchmark, whether
    it ran as a script (argv[0] = .../benchmarks/<name>.py) or was called as ``main(argv)``."""
    first = argv[0] if argv else "?"
    script = Path(first)
    if script.suffix == ".py" and script.parent.name == "benchmarks":
        first = f"python -m benchmarks.{script.stem}"
    elif first.startswith("benchmarks."):
        first = f"python -m {first}"
    return " ".join([first, *argv[1:]])


def write_results(out_dir: str | Path, stem: str, meta: dict[str, Any], rows: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` (metadata + rows + extra) and ``<stem>.csv`` (rows, metadata columns)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out / f"{stem}.json", out / f"{stem}.csv"
    jpath.write_text(json.dumps({"meta": meta, "rows": rows, **(extra or {})}, indent=2, default=str) + "\n")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    meta_cols = {"device": meta["device"], "torch": meta["torch"], "commit": meta["commit"],
                 "dirty": meta.get("dirty"), "command": command_line(meta["argv"])}
    with cpath.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + list(meta_cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r.get(k) for k in keys}, **meta_cols})
    return jpath, cpath


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec); missing / None values print as '-'."""
    def cell(r, key, spec):
        v = r.get(key)
        if v is None or v == "":
            return "-"
        try:
            return format(v, spec)
        except (TypeError, ValueError):
            return str(v)
    cells = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line([h for _, h, _ in columns]), line(["-" * w for w in widths])] + [line(c) for c in cells])
