"""One metrics JSON per run, with everything needed to trust and redo the number.

Fields: method, backbone, arch, pretraining_data, task, metric (primary), value, metrics
(all numbers of the run), protocol (settings), command, git_commit, git_dirty, hardware,
date. ``read_runs`` is what ``tcjepa-eval tables`` merges with the reported numbers.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

SCHEMA = "tcjepa-eval-run/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
WIDTH_NAMES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1408: "g", 1536: "g", 1152: "So400m"}


def git_state(root: Path = REPO_ROOT) -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the working tree, read-only; (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def arch_label(info: dict) -> str:
    """'ViT-B/16' style name from a backbone's protocol info."""
    width, patch = info.get("embed_dim"), info.get("patch_size")
    return f"ViT-{WIDTH_NAMES.get(width, f'w{width}')}/{patch}"


def run_record(
    method: str,
    backbone_info: dict,
    pretraining_data: str,
    task: str,
    metrics: dict[str, Optional[float]],
    metric: str,
    protocol: dict,
    command: Optional[str] = None,
) -> dict:
    if metric not in metrics:
        raise ValueError(f"primary metric {metric!r} not among {sorted(metrics)}")
    commit, dirty = git_state()
    return {
        "schema": SCHEMA,
        "method": method,
        "backbone": backbone_info.get("name") or backbone_info.get("backbone"),
        "arch": arch_label(backbone_info),
        "pretraining_data": pretraining_data,
        "task": task,
        "metric": metric,
        "value": float(metrics[metric]),
        "metrics": {k: None if v is None else float(v) for k, v in metrics.items()},  # None: no value exists
        "protocol": {"backbone": backbone_info, **protocol},
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": commit,
        "git_dirty": dirty,
        "hardware": hardware(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run(record: dict, out_dir: str | Path) -> Path:
    """``out_dir/<date>_<task>_<method>_<arch>.json``; never overwrites an earlier run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "_".join([record["date"][:19].replace(":", ""), record["task"], record["method"], record["arch"]])
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)
    path, i = out_dir / f"{stem}.json", 1
    while path.exists():
        path, i = out_dir / f"{stem}-{i}.json", i + 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def read_runs(runs_dir: str | Path) -> list[dict]:
    """Every run JSON under ``runs_dir`` (recursively); other JSON files are skipped."""
    runs = []
    for path in sorted(Path(runs_dir).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            record["path"] = str(path)
            runs.append(record)
    return runs
