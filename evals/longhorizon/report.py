"""The study's report from whatever rows exist: all rows, per-budget summary, verdict, curves.

Writes ``runs.csv`` (every evaluated checkpoint), ``summary.csv`` (mean, sample std and seed
count per variant and budget), ``verdict.md`` / ``verdict.csv`` (the protocol's comparisons
at every budget where both sides have the same seeds), ``overview.md`` (those comparisons and
the caption gaps, one line per step: the table a study README quotes) and ``curves.png`` (probe and mIoU
against steps, mean +- sample std per variant, and the caption gap of the text runs). The I-JEPA
run's step-0 row is the untrained encoder.
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from evals.longhorizon.grid import FIELDS, read_rows
from tcjepa.study.variants import UNTRAINED, VARIANTS

TASKS = ("probe_top1", "seg_miou")
COMPARISONS = (
    ("ijepa", UNTRAINED), ("tc_paper", "ijepa"), ("tc_paper", "tc_shuffled"), ("tc_centered", "ijepa"),
    ("tc_centered", "tc_centered_shuffled"), ("tc_shuffled", "ijepa"), ("ijepa_adam2500", "ijepa"),
    ("tc_paper", "ijepa_adam2500"), ("supervised", UNTRAINED), ("supervised", "ijepa"),
)
LABELS = {UNTRAINED: "untrained", **{k: v.description for k, v in VARIANTS.items()}}
# The protocol's regime: pretraining pays where I-JEPA's mean lead over untrained reaches these.
REGIME = {"probe_top1": 10.0, "seg_miou": 2.0}


def collect(*works: Path, variants: Optional[Sequence[str]] = None) -> list[dict]:
    """The rows of every run of the grids in ``works`` (of ``variants`` only, if given); a
    diagnostic outside the protocol's grid is reported beside that grid's own runs so."""
    rows = []
    for path in sorted(p for work in works for p in work.glob("*-s*/eval.csv")):
        for r in read_rows(path):
            if variants is not None and r["variant"] not in variants:
                continue
            if r["variant"] == "ijepa" and int(r["step"]) == 0:
                rows.append({**r, "variant": UNTRAINED})
            rows.append(r)
    return rows


def values(rows: list[dict], task: str) -> dict[tuple[str, int], dict[int, float]]:
    """(variant, step) -> {seed: value}, for rows that have the task; the untrained row counts at every step."""
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    steps = sorted({int(r["step"]) for r in rows if int(r["step"]) > 0})
    for r in rows:
        if r.get(task) in ("", None):
            continue
        if r["variant"] == UNTRAINED:
            for step in steps:
                out[UNTRAINED, step][int(r["seed"])] = float(r[task])
        elif not (r["variant"] == "ijepa" and int(r["step"]) == 0):
            out[r["variant"], int(r["step"])][int(r["seed"])] = float(r[task])
    return out


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def compare(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """The protocol's verdict rule on paired seeds: ahead / behind when the mean paired
    difference exceeds the larger seed spread (sample std) of the two, level otherwise."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    spread = max(_sd([a[s] for s in seeds]), _sd([b[s] for s in seeds]))
    mean = statistics.fmean(diffs)
    word = "ahead" if mean > spread else "behind" if mean < -spread else "level"
    return {"seeds": len(seeds), "difference": mean, "spread": spread, "verdict": word,
            "paired": " / ".join(f"{d:+.2f}" for d in diffs)}


def write_csv(path: Path, rows: list[dict], fields) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def summary_rows(rows: list[dict]) -> list[dict]:
    out = []
    per_task = {t: values(rows, t) for t in TASKS}
    keys = sorted(set().union(*per_task.values()), key=lambda k: (k[1], k[0]))
    for variant, step in keys:
        row = {"variant": variant, "step": step}
        for t in TASKS:
            xs = list(per_task[t].get((variant, step), {}).values())
            row.update({f"{t}_mean": round(statistics.fmean(xs), 3) if xs else "",
                        f"{t}_std": round(_sd(xs), 3) if len(xs) > 1 else "", f"{t}_seeds": len(xs)})
        out.append(row)
    return out


def verdict_rows(rows: list[dict]) -> list[dict]:
    out = []
    per_task = {t: values(rows, t) for t in TASKS}
    steps = sorted({k[1] for k in per_task["probe_top1"]})
    for step in steps:
        for a, b in COMPARISONS:
            for t in TASKS:
                c = compare(per_task[t].get((a, step), {}), per_task[t].get((b, step), {}))
                if c is not None:
                    out.append({"step": step, "a": a, "b": b, "task": t, **c})
    return out


def regime_line(verdicts: list[dict], step: int) -> str:
    """Whether pretraining pays at ``step`` by the protocol's rule, from the ijepa-untrained rows."""
    lead = {v["task"]: v for v in verdicts if v["step"] == step and (v["a"], v["b"]) == ("ijepa", UNTRAINED)}
    if set(lead) != set(REGIME):
        return "Regime: no I-JEPA-untrained comparison here yet."
    pays = all(lead[t]["difference"] >= REGIME[t] for t in REGIME)
    figures = ", ".join(f"{lead[t]['difference']:+.2f} {'probe points' if t == 'probe_top1' else 'mIoU'} "
                        f"(needs {REGIME[t]:+.0f})" for t in REGIME)
    seeds = min(lead[t]["seeds"] for t in REGIME)
    if pays:
        return f"Regime: I-JEPA over untrained {figures}, {seeds} seeds: pretraining pays here; the TC-JEPA rows are read."
    return (f"Regime: I-JEPA over untrained {figures}, {seeds} seeds: **pretraining does not yet pay here**, "
            "so by the protocol the TC-JEPA rows below are bookkeeping, not a verdict.")


def gap_rows(rows: list[dict], variant: str, step: int) -> list[dict]:
    """The rows of ``variant`` at ``step`` that carry a caption gap."""
    return [r for r in rows if r["variant"] == variant and int(r["step"]) == step
            and r.get("text_gap_relative") not in ("", None)]


def gap_values(rows: list[dict], variant: str, step: int) -> list[float]:
    """The caption gaps of ``variant`` at ``step``, relative to the shuffled-caption loss, one per seed."""
    return [float(r["text_gap_relative"]) for r in gap_rows(rows, variant, step)]


def text_line(rows: list[dict], step: int, threshold: float = 0.02, variant: str = "tc_paper") -> str:
    """Whether the predictor reads the captions at ``step``: the protocol reads a TC-JEPA
    comparison only where the caption gap of tc_paper is ``threshold`` of the shuffled loss."""
    gaps = gap_values(rows, variant, step)
    if not gaps:
        return f"Text: no caption-gap row of {variant} here yet."
    mean = statistics.fmean(gaps)
    if mean >= threshold:
        return f"Text: caption gap of {variant} {mean:.2%} of the shuffled loss ({len(gaps)} seeds): the captions are read."
    return (f"Text: caption gap of {variant} {mean:.2%} of the shuffled loss ({len(gaps)} seeds), below "
            f"{threshold:.0%}: **text not yet read**, so the TC-JEPA rows are bookkeeping here.")


def verdict_markdown(verdicts: list[dict], rows: list[dict] = ()) -> str:
    lines = ["# Verdict table (generated by `python -m evals.longhorizon.study report`)", "",
             "a against b, paired over the seeds both have: mean difference (a - b), the larger seed",
             "spread (sample std) of the two, and the protocol's word: ahead / behind beyond the spread,",
             "level within it.", ""]
    for step in sorted({v["step"] for v in verdicts}):
        lines += [f"## step {step}", "", regime_line(verdicts, step), "", text_line(rows, step), "",
                  "| a | b | task | seeds | a - b | spread | paired | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in (v for v in verdicts if v["step"] == step):
            lines.append(f"| {v['a']} | {v['b']} | {v['task']} | {v['seeds']} | {v['difference']:+.2f} | "
                         f"{v['spread']:.2f} | {v['paired']} | {v['verdict']} |")
        lines.append("")
    return "\n".join(lines)


def overview_markdown(verdicts: list[dict], rows: list[dict]) -> str:
    """One line per step: each comparison that has rows, probe / mIoU paired difference with
    its verdict word, and the caption gap of each text variant (mean over seeds)."""
    found = {(v["step"], v["a"], v["b"], v["task"]): v for v in verdicts}
    pairs = [p for p in COMPARISONS if any(k[1:3] == p for k in found)]
    steps = sorted({k[0] for k in found})
    texts = [name for name in VARIANTS if any(gap_values(rows, name, step) for step in steps)]
    head = [f"{a} - {b}" for a, b in pairs] + [f"caption gap {name}" for name in texts]
    lines = ["# Overview (generated by `python -m evals.longhorizon.study report`)", "",
             "Paired mean difference, probe top-1 / seg. mIoU, with the verdict word (ahead / behind",
             "beyond the larger seed spread, level within it) and the seed count; caption gap as a",
             "share of the shuffled-caption loss, mean over seeds. verdict.md has every figure.", "",
             "| step | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for step in steps:
        cells = []
        for a, b in pairs:
            got = {t: found[step, a, b, t] for t in TASKS if (step, a, b, t) in found}
            cells.append(" / ".join(f"{got[t]['difference']:+.2f} {got[t]['verdict']}" if t in got else "-"
                                    for t in TASKS) + f" ({min(g['seeds'] for g in got.values())})" if got else "")
        for name in texts:
            gaps = gap_values(rows, name, step)
            cells.append(f"{statistics.fmean(gaps):.2%} ({len(gaps)})" if gaps else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, task in zip(axes, (*TASKS, "text_gap_relative")):
        per = values(rows, task)
        for colour, variant in enumerate([UNTRAINED, *VARIANTS]):  # one colour per variant in every panel
            pts = sorted((step, list(v.values())) for (name, step), v in per.items() if name == variant and step > 0)
            if not pts:
                continue
            steps = [p[0] for p in pts]
            mean = [statistics.fmean(p[1]) for p in pts]
            sd = [_sd(p[1]) if len(p[1]) > 1 else 0.0 for p in pts]
            ax.plot(steps, mean, marker="o", color=f"C{colour}",
                    label=f"{LABELS[variant]} (n={min(len(p[1]) for p in pts)})")
            ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=f"C{colour}", alpha=0.15)
        if task in REGIME and (UNTRAINED, max(s for _, s in per)) in per:
            base = statistics.fmean(per[UNTRAINED, max(s for _, s in per)].values())
            ax.axhline(base + REGIME[task], color="k", ls="--", lw=0.8,
                       label=f"untrained + {REGIME[task]:.0f} (the regime)")
        ax.set_xscale("log")
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel({"probe_top1": "linear probe top-1 (%)", "seg_miou": "linear seg. mIoU (%)",
                       "text_gap_relative": "caption gap / shuffled-caption loss"}[task])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    budgets = sorted({r["budget"] for r in rows})
    fig.suptitle(f"Long-horizon study, budget {', '.join(budgets)} steps: mean +- sample std over seeds "
                 "(held-out scenes; n = fewest seeds along the curve)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(work: Path | Sequence[Path], out: Path, variants: Optional[Sequence[str]] = None) -> list[dict]:
    rows = collect(*([work] if isinstance(work, Path) else work), variants=variants)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", rows, FIELDS)
    summary = summary_rows(rows)
    if summary:
        write_csv(out / "summary.csv", summary, summary[0].keys())
    verdicts = verdict_rows(rows)
    write_csv(out / "verdict.csv", verdicts, ("step", "a", "b", "task", "seeds", "difference", "spread",
                                              "paired", "verdict"))
    (out / "verdict.md").write_text(verdict_markdown(verdicts, rows) + "\n")
    (out / "overview.md").write_text(overview_markdown(verdicts, rows) + "\n")
    if any(r.get("probe_top1") for r in rows):
        plot_curves(rows, out / "curves.png")
    return rows


def gap_check(work: Path, step: int, threshold: float = 0.02, variant: str = "tc_paper") -> tuple[int, str]:
    """The protocol's pre-run check: (exit code, message). 0: the caption gap of ``variant`` at
    ``step`` (mean over its seeds, relative to the shuffled-caption loss) reaches ``threshold``;
    3: it is below (the captions add nothing yet; at the protocol's first lr that meant changing
    the scenes, since its lr change it means the TC-JEPA rows are not read: PROTOCOL.md); 4: no row yet."""
    rows = gap_rows(collect(work), variant, step)
    if not rows:
        return 4, f"no caption-gap row of {variant} at step {step} in {work} yet"
    gaps = [float(r["text_gap_relative"]) for r in rows]
    mean = statistics.fmean(gaps)
    detail = ", ".join(f"seed {r['seed']}: gap {float(r['text_gap']):.5f} ({float(r['text_gap_relative']):.2%})"
                       for r in rows)
    if mean < threshold:
        return 3, (f"caption gap of {variant} at step {step} is {mean:.2%} of the shuffled loss, below "
                   f"{threshold:.0%} ({detail}): the captions add nothing yet (PROTOCOL.md History, 13:55)")
    return 0, f"caption gap of {variant} at step {step}: {mean:.2%} of the shuffled loss ({detail})"
