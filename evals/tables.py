"""The paper's Tables 1-5 as CSV + markdown: reported numbers, plus measured runs.

Reported numbers live in ``results/paper/reported.csv`` (one row per number, with its
table, ``source=reported``). Measured runs (``evals.results`` JSONs) join every table that
has their task/metric as a column, as ``source=measured`` rows carrying command, commit,
hardware and date. ``all_results.csv`` keeps every number in long form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from evals.results import read_runs

REPORTED_CSV = Path(__file__).resolve().parents[1] / "results" / "paper" / "reported.csv"
PROVENANCE = ("command", "git_commit", "hardware", "date")

COLUMN_NAMES = {
    ("in1k_linear", "top1"): "IN-1k linear top-1",
    ("cifar100_linear", "top1"): "CIFAR-100 linear top-1",
    ("inat18_linear", "top1"): "iNat18 linear top-1",
    ("ade20k_linear", "mIoU"): "ADE20k linear mIoU",
    ("ade20k_ft", "mIoU"): "ADE20k fine-tuned mIoU",
    ("voc_linear", "mIoU"): "VOC linear mIoU",
    ("coco_det", "box_AP"): "COCO box AP",
    ("captioning", "CIDEr"): "Captioning CIDEr",
    ("gqa", "accuracy"): "GQA",
    ("vqav2", "accuracy"): "VQAv2",
}


@dataclass(frozen=True)
class TableSpec:
    name: str
    file: str
    title: str
    columns: tuple[tuple[str, str], ...]  # (task, metric) in paper order
    by_arch: bool = False  # Table 1: one column per architecture, not per task


TABLES = (
    TableSpec("table1", "table1_in1k_linear_by_size",
              "Table 1: IN-1k linear top-1, pretrained on IN-1k", (("in1k_linear", "top1"),), by_arch=True),
    TableSpec("table2", "table2_vith14_dense_and_transfer",
              "Table 2: ViT-H/14 pretrained on IN-1k",
              (("coco_det", "box_AP"), ("ade20k_linear", "mIoU"), ("ade20k_ft", "mIoU"),
               ("inat18_linear", "top1"), ("voc_linear", "mIoU"))),
    TableSpec("table3", "table3_large_scale_linear",
              "Table 3: IN-1k linear / CIFAR-100 linear / ADE20k linear mIoU",
              (("in1k_linear", "top1"), ("cifar100_linear", "top1"), ("ade20k_linear", "mIoU"))),
    TableSpec("table4", "table4_image_text_pretraining",
              "Table 4: image-text pretraining, IN-1k linear / COCO box AP / ADE20k fine-tuned mIoU",
              (("in1k_linear", "top1"), ("coco_det", "box_AP"), ("ade20k_ft", "mIoU"))),
    TableSpec("table5", "table5_vision_language_transfer",
              "Table 5: vision-language transfer", (("captioning", "CIDEr"), ("gqa", "accuracy"), ("vqav2", "accuracy"))),
)
ARCH_ORDER = ("ViT-B/16", "ViT-L/16", "ViT-H/14")


def load_reported(path: Path = REPORTED_CSV) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"value": str}, keep_default_na=False)
    df["value"] = df["value"].astype(float)
    df["source"] = "reported"
    for col in PROVENANCE:
        df[col] = ""
    return df


def measured_rows(runs: list[dict]) -> pd.DataFrame:
    """Long rows (one per metric of each run) placed into every table with that column."""
    rows = []
    for run in runs:
        for metric, value in run.get("metrics", {run["metric"]: run["value"]}).items():
            key = (run["task"], metric)
            for spec in TABLES:
                if key in spec.columns:
                    rows.append({
                        "table": spec.name, "method": run["method"], "arch": run.get("arch", ""),
                        "pretraining_data": run.get("pretraining_data", ""), "task": run["task"],
                        "metric": metric, "value": float(value), "note": run.get("path", ""),
                        "source": "measured", **{c: str(run.get(c, "")) for c in PROVENANCE},
                    })
            if not any(key in spec.columns for spec in TABLES):
                rows.append({"table": "", "method": run["method"], "arch": run.get("arch", ""),
                             "pretraining_data": run.get("pretraining_data", ""), "task": run["task"],
                             "metric": metric, "value": float(value), "note": run.get("path", ""),
                             "source": "measured", **{c: str(run.get(c, "")) for c in PROVENANCE}})
    return pd.DataFrame(rows)


def wide_table(long: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One row per (method, arch, data, source); one column per paper column."""
    df = long[long["table"] == spec.name].copy()
    if spec.by_arch:
        df["column"] = df["arch"]
        index = ["method", "pretraining_data", "source"]
        order = list(ARCH_ORDER) + sorted(set(df["column"]) - set(ARCH_ORDER))
    else:
        df["column"] = [COLUMN_NAMES[(t, m)] for t, m in zip(df["task"], df["metric"])]
        index = ["method", "arch", "pretraining_data", "source"]
        order = [COLUMN_NAMES[c] for c in spec.columns]
    df["row"] = df.groupby(index, sort=False).ngroup()
    values = df.pivot_table(index="row", columns="column", values="value", aggfunc="first")
    keys = df.drop_duplicates("row").set_index("row")
    provenance = df.groupby("row")[list(PROVENANCE)].agg(lambda s: "; ".join(sorted({v for v in s if v})))
    wide = keys[index].join(values.reindex(columns=[c for c in order if c in values.columns])).join(provenance)
    return wide.reset_index(drop=True)


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """GitHub markdown without extra dependencies; numbers keep one decimal as in the paper."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.1f}"
        return str(v).replace("|", "\\|")

    shown = [c for c in df.columns if c not in PROVENANCE or df[c].astype(bool).any()]
    lines = [f"## {title}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(row[c]) for c in shown) + " |" for _, row in df.iterrows()]
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path, runs_dir: Optional[str | Path] = None, reported: Path = REPORTED_CSV) -> list[Path]:
    """Write each table as CSV + markdown into ``out``; returns the CSV paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = [load_reported(reported)]
    runs = read_runs(runs_dir) if runs_dir else []
    if runs:
        frames.append(measured_rows(runs))
    long = pd.concat(frames, ignore_index=True)
    written = []
    for spec in TABLES:
        wide = wide_table(long, spec)
        csv = out / f"{spec.file}.csv"
        wide.to_csv(csv, index=False, float_format="%.1f")
        csv.with_suffix(".md").write_text(to_markdown(wide, spec.title))
        written.append(csv)
    all_csv = out / "all_results.csv"
    long.to_csv(all_csv, index=False)
    written.append(all_csv)
    return written
