"""The paper's Tables 1-5 as CSV + markdown: reported numbers, plus measured runs.

Reported numbers live in ``results/paper/reported.csv`` (one row per number, with its
table, ``source=reported``). A measured run (``evals.results`` JSON) joins a paper table
only when the pretraining data and architecture it records are the ones that table
compares (Table 2: ViT-H/14 pretrained on IN-1k, ...); a run on any other data goes to a
separate ``other_measured`` table, never under a paper column. Measured probes (linear,
logreg, k-NN, attentive) also meet side by side in ``probes_measured``. Rows carry
command, commit, hardware and date; a metric without a value is an empty cell.
``all_results.csv`` keeps every number in long form.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from evals.results import read_runs

REPORTED_CSV = Path(__file__).resolve().parents[1] / "results" / "paper" / "reported.csv"
PROVENANCE = ("command", "git_commit", "hardware", "date")

COLUMN_NAMES = {
    ("in1k_linear", "top1"): "IN-1k linear top-1",
    ("in1k_logreg", "top1"): "IN-1k logreg top-1",
    ("in1k_knn", "top1"): "IN-1k k-NN top-1",
    ("in1k_attentive", "top1"): "IN-1k attentive top-1",
    ("cifar100_linear", "top1"): "CIFAR-100 linear top-1",
    ("inat18_linear", "top1"): "iNat18 linear top-1",
    ("ade20k_linear", "mIoU"): "ADE20k linear mIoU",
    ("ade20k_ft", "mIoU"): "ADE20k fine-tuned mIoU",
    ("voc_linear", "mIoU"): "VOC linear mIoU",
    ("coco_det", "bbox_AP"): "COCO box AP",
    ("coco_det", "segm_AP"): "COCO mask AP",
    ("captioning", "CIDEr"): "Captioning CIDEr",
    ("gqa", "accuracy"): "GQA",
    ("vqav2", "accuracy"): "VQAv2",
}
# Names engines and older files use for the same COCO numbers (mmdet's bbox_mAP, the paper's box AP).
METRIC_ALIASES = {"box_AP": "bbox_AP", "bbox_mAP": "bbox_AP", "mask_AP": "segm_AP", "segm_mAP": "segm_AP"}

# Pretraining data as spelled in results -> the paper's name (compared without case or punctuation).
DATA_NAMES = {
    "in1k": "IN-1k", "imagenet1k": "IN-1k", "imagenet": "IN-1k", "ilsvrc2012": "IN-1k",
    "in21k": "IN-21k", "imagenet21k": "IN-21k", "in22k": "IN-21k", "imagenet22k": "IN-21k",
    "cc27m": "CC27M", "cc30m": "CC30M", "cc12m": "CC12M", "cc3m": "CC3M",
    "yfcc": "YFCC", "yfcc15m": "YFCC", "yfcc100m": "YFCC", "lvd142m": "LVD-142M", "webli": "WebLI",
}
IMAGE_TEXT_DATA = frozenset({"CC27M", "CC30M", "CC12M", "CC3M", "YFCC", "WebLI"})


@dataclass(frozen=True)
class TableSpec:
    name: str
    file: str
    title: str
    columns: tuple[tuple[str, str], ...]  # (task, metric) in paper order
    data: Optional[frozenset] = None  # pretraining data a measured row must record (None: any)
    archs: Optional[frozenset] = None  # architectures a measured row must record (None: any)
    by_arch: bool = False  # Table 1: one column per architecture, not per task


TABLES = (
    TableSpec("table1", "table1_in1k_linear_by_size",
              "Table 1: IN-1k linear top-1, pretrained on IN-1k", (("in1k_linear", "top1"),),
              data=frozenset({"IN-1k"}), by_arch=True),
    TableSpec("table2", "table2_vith14_dense_and_transfer",
              "Table 2: ViT-H/14 pretrained on IN-1k",
              (("coco_det", "bbox_AP"), ("coco_det", "segm_AP"), ("ade20k_linear", "mIoU"), ("ade20k_ft", "mIoU"),
               ("inat18_linear", "top1"), ("voc_linear", "mIoU")),
              data=frozenset({"IN-1k"}), archs=frozenset({"ViT-H/14"})),
    TableSpec("table3", "table3_large_scale_linear",
              "Table 3: IN-1k linear / CIFAR-100 linear / ADE20k linear mIoU",
              (("in1k_linear", "top1"), ("cifar100_linear", "top1"), ("ade20k_linear", "mIoU")),
              data=frozenset({"IN-21k", "CC27M", "LVD-142M", "WebLI"})),
    TableSpec("table4", "table4_image_text_pretraining",
              "Table 4: image-text pretraining, IN-1k linear / COCO box AP / ADE20k fine-tuned mIoU",
              (("in1k_linear", "top1"), ("coco_det", "bbox_AP"), ("coco_det", "segm_AP"), ("ade20k_ft", "mIoU")),
              data=IMAGE_TEXT_DATA),
    TableSpec("table5", "table5_vision_language_transfer",
              "Table 5: vision-language transfer", (("captioning", "CIDEr"), ("gqa", "accuracy"), ("vqav2", "accuracy")),
              data=IMAGE_TEXT_DATA),
)
PROBES_TABLE = TableSpec(
    "probes", "probes_measured", "Frozen-feature probes (measured): IN-1k-layout linear / logreg / k-NN / attentive",
    (("in1k_linear", "top1"), ("in1k_logreg", "top1"), ("in1k_knn", "top1"), ("in1k_attentive", "top1")))
OTHER_TABLE_NAME, OTHER_TABLE_FILE = "other", "other_measured"
OTHER_TITLE = "Other measured runs (pretraining data or architecture that no paper table compares)"
ARCH_ORDER = ("ViT-B/16", "ViT-L/16", "ViT-H/14")


def canonical_metric(metric: str) -> str:
    return METRIC_ALIASES.get(metric, metric)


def canonical_data(name) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(name or "").lower())
    return DATA_NAMES.get(key, str(name or ""))


def accepts(spec: TableSpec, data: str, arch: str) -> bool:
    return (spec.data is None or data in spec.data) and (spec.archs is None or arch in spec.archs)


def load_reported(path: Path = REPORTED_CSV) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"value": str}, keep_default_na=False)
    df["value"] = df["value"].astype(float)
    df["metric"] = df["metric"].map(canonical_metric)
    df["source"] = "reported"
    for col in PROVENANCE:
        df[col] = ""
    return df


def _value(v) -> float:
    """A metric's value, NaN (an empty cell) when the run has none."""
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def run_tables(run: dict, key: tuple[str, str]) -> list[str]:
    """Names of the tables a run's (task, metric) appears in."""
    data, arch = canonical_data(run.get("pretraining_data")), run.get("arch", "")
    placed = [s.name for s in TABLES if key in s.columns and accepts(s, data, arch)]
    if key in PROBES_TABLE.columns:
        placed.append(PROBES_TABLE.name)
    return placed


def measured_rows(runs: list[dict]) -> pd.DataFrame:
    """Long rows, one per (metric of each run, table it appears in).

    A run that no paper table takes shows its named columns and its primary metric in the
    'other' table; every metric appears in the long form at least once (table '')."""
    rows = []
    for run in runs:
        metrics: dict = {}
        for m, v in (run.get("metrics") or {run["metric"]: run["value"]}).items():
            if metrics.get(canonical_metric(m)) is None:  # two spellings of one metric: keep the value
                metrics[canonical_metric(m)] = v
        primary = canonical_metric(run.get("metric", ""))
        keys = [(run["task"], m) for m in metrics]
        in_paper = any(t != PROBES_TABLE.name for k in keys for t in run_tables(run, k))
        common = {"method": run.get("method", ""), "arch": run.get("arch", ""),
                  "pretraining_data": canonical_data(run.get("pretraining_data")), "task": run["task"],
                  "note": run.get("path", ""), "source": "measured",
                  **{c: str(run.get(c) or "") for c in PROVENANCE}}
        for (task, metric), value in zip(keys, metrics.values()):
            tables = run_tables(run, (task, metric))
            if not in_paper and ((task, metric) in COLUMN_NAMES or metric == primary):
                tables.append(OTHER_TABLE_NAME)
            for table in tables or [""]:
                rows.append({"table": table, **common, "metric": metric, "value": _value(value)})
    return pd.DataFrame(rows)


def column_name(task: str, metric: str) -> str:
    return COLUMN_NAMES.get((task, metric), f"{task} {metric}")


def wide_table(long: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One row per (method, arch, data, source); one column per paper column."""
    df = long[long["table"] == spec.name].copy()
    if spec.by_arch:
        df["column"] = df["arch"]
        index = ["method", "pretraining_data", "source"]
        order = list(ARCH_ORDER) + sorted(set(df["column"]) - set(ARCH_ORDER))
    else:
        df["column"] = [column_name(t, m) for t, m in zip(df["task"], df["metric"])]
        index = ["method", "arch", "pretraining_data", "source"]
        order = [column_name(*c) for c in spec.columns]
    if df.empty:
        return pd.DataFrame(columns=index + [c for c in order if not spec.by_arch] + list(PROVENANCE))
    df["row"] = df.groupby(index, sort=False).ngroup()
    values = df.pivot_table(index="row", columns="column", values="value", aggfunc="first", dropna=False)
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
    """Write each table as CSV + markdown into ``out``; returns the CSV paths. The measured-only
    tables are written when there are measured runs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = [load_reported(reported)]
    runs = read_runs(runs_dir) if runs_dir else []
    if runs:
        frames.append(measured_rows(runs))
    long = pd.concat(frames, ignore_index=True)
    specs = list(TABLES)
    if runs:
        other_columns = tuple(dict.fromkeys(zip(*(long.loc[long["table"] == OTHER_TABLE_NAME, c]
                                                  for c in ("task", "metric")))))
        specs += [PROBES_TABLE, TableSpec(OTHER_TABLE_NAME, OTHER_TABLE_FILE, OTHER_TITLE, other_columns)]
    written = []
    for spec in specs:
        wide = wide_table(long, spec)
        csv = out / f"{spec.file}.csv"
        wide.to_csv(csv, index=False, float_format="%.1f")
        csv.with_suffix(".md").write_text(to_markdown(wide, spec.title))
        written.append(csv)
    all_csv = out / "all_results.csv"
    long.to_csv(all_csv, index=False)
    written.append(all_csv)
    return written
