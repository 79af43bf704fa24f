"""Probe-head learning curves beside a result: ``<result>.curves.csv`` and ``<result>.tb/``.

Rows come from ``evals.probe_training.train_heads``: one per (epoch, head) with the head's
mean training loss, its lr and its top-1 on each evaluation split. TensorBoard gets one
scalar per (head, quantity), e.g. ``patch_mean:last1@lr=0.1/loss``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def curve_paths(result_json: Path) -> tuple[Path, Path]:
    stem = result_json.with_suffix("")
    return stem.with_name(stem.name + ".curves.csv"), stem.with_name(stem.name + ".tb")


def write_curves(curves: list[dict], result_json: str | Path, tensorboard: bool = True) -> list[Path]:
    """Write ``curves`` next to ``result_json``; returns the paths written."""
    if not curves:
        return []
    csv, tb = curve_paths(Path(result_json))
    frame = pd.DataFrame(curves)
    tmp = csv.with_name(csv.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(csv)
    written = [csv]
    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; the CSV holds the same numbers
            return written
        with SummaryWriter(str(tb)) as writer:
            quantities = [c for c in frame.columns if c not in ("epoch", "head")]
            for row in frame.itertuples(index=False):
                for quantity in quantities:
                    value = getattr(row, quantity)
                    if pd.notna(value):
                        writer.add_scalar(f"{row.head}/{quantity}", float(value), int(row.epoch))
        written.append(tb)
    return written
