"""Ablations of TC-JEPA on the embedded scenes: same data, budget and seeds as the demo.

Each variant is the CPU TC-JEPA config plus a few overrides (the paper's ablation directions,
docs/SPEC.md section 8); I-JEPA and TC-JEPA on captions shuffled across images are the two
references. Every encoder gets the demo's linear probe and linear segmentation; the study
writes ``ablations.csv`` (mean, std, n per variant), ``per_seed.csv``, ``verdict.csv`` (each
variant against TC-JEPA, paired by seed), ``ablations.png`` and ``monitors.csv`` (how each
pretraining ended: text gain, word-attention entropy, cosines). Rows already published in
``--out`` by an earlier study on the same scenes (other seeds, another machine) are kept.

    python -m evals.ablations --seeds 0 1 2                  # every variant (hours on 2 CPU cores)
    python -m evals.ablations --variants "no regularizers" "N=1" --seeds 0
    python -m evals.ablations --report-only                  # CSVs + plot from the records so far

Encoders live in the demo's runs folder by default, so the demo's I-JEPA / TC-JEPA /
shuffled-caption encoders of the same seeds are reused rather than trained again.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from evals.demo import (REPO, TASK_RECORDS, DemoPlan, config_differences, ensure_scenes, eval_runs_dir, evaluate,
                        log, pretrain, run_directories, text_caches, train_config)
from evals.demo_report import SHUFFLED, joined, per_seed_metrics, provenance, seed_stats, seed_verdict

FULL = "TC-JEPA"
# What eval records and published results were made with; results of another study never mix in.
SCENES_STAMP = "scenes.json"  # the scene plan
PRETRAINING_STAMP = "pretraining.json"  # the TC-JEPA settings every variant adds its overrides to
_NOT_LEARNED = ("data.root", "data.text_cache", "train.out_dir", "train.seed")  # where, and which seed
# name -> overrides of the CPU TC-JEPA config; FULL, I-JEPA and SHUFFLED are built specially.
VARIANTS: dict[str, list[str]] = {
    FULL: [],
    "I-JEPA": [],
    SHUFFLED: [],
    "no regularizers": ["loss.sparse_weight=0", "loss.consist_weight=0"],
    "sparse only": ["loss.consist_weight=0"],
    "consistency only": ["loss.sparse_weight=0"],
    # The paper finds results insensitive to lambda and beta; a tenth of both tests that here.
    "regularizers / 10": ["loss.sparse_weight=0.01", "loss.consist_weight=0.05"],
    "N=1": ["data.num_captions=1"],
    "N=8": ["data.num_captions=8"],  # scenes have 6 captions: sampled with replacement, as the loader does
    "mean pooling": ["model.caption_pool=mean"],
    "attention pooling": ["model.caption_pool=attention"],
    "block pool point": ["model.caption_pool_point=block"],
    "single layer": ["model.conditioned_layers=[-1]"],  # the last predictor layer only
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def variant_config(name: str, data: Path, work: Path, plan: DemoPlan, seed: int, cache: Path,
                   shuffled_cache: Optional[Path]):
    demo_dirs = run_directories(work, seed, shuffled=True)
    if name in demo_dirs:  # the demo's own encoders
        cache_for = {"I-JEPA": None, FULL: cache, SHUFFLED: shuffled_cache}[name]
        captions = "captions_shuffled.jsonl" if name == SHUFFLED else "captions.jsonl"
        return train_config(name, data, demo_dirs[name], plan, seed, cache_for, captions_file=captions)
    variant_plan = replace(plan, config_overrides=[*plan.config_overrides, *VARIANTS[name]])
    return train_config(FULL, data, variant_run_dir(name, work, seed), variant_plan, seed, cache)


def run_ablations(plan: DemoPlan, variants: list[str], data: Path, work: Path, out: Path, command: str,
                  report_only: bool = False) -> Path:
    runs = eval_runs_dir(work, out)
    if report_only:
        if not runs.exists():
            raise SystemExit(f"{runs}: no eval records to report; run the study first")
        unstamped = [name for name in (SCENES_STAMP, PRETRAINING_STAMP) if not (runs / name).exists()]
        if unstamped:
            raise SystemExit(f"{runs}: no {' or '.join(unstamped)}, so what these records were made with is "
                             "unknown; run the study without --report-only to evaluate them again")
        return write_ablation_report(runs, out, command, seeds_in_command=True)
    ensure_scenes(data, plan)
    cache, shuffled_cache = text_caches(data, work, plan, SHUFFLED in variants)
    forget_records_of_another_study(runs, data, plan)
    published_rows(out, runs)  # results of another study in --out fail now, not after hours of training
    for seed in plan.seeds:
        for name in variants:
            if evaluated(runs / f"seed{seed}", name, plan):
                log(f"{name} (seed {seed}): already evaluated")
                continue
            cfg = variant_config(name, data, work, plan, seed, cache, shuffled_cache)
            ckpt = pretrain(name, cfg)
            evaluate(["--ckpt", str(ckpt)], name, data, runs / f"seed{seed}", plan, seed)
    return write_ablation_report(runs, out, command)


def pretraining_settings(plan: DemoPlan, data: Path) -> dict:
    """The study's base TC-JEPA config, less where it reads and writes and which seed."""
    settings = train_config(FULL, data, Path("run"), plan, 0, None).to_dict()
    for dotted in _NOT_LEARNED:
        section, key = dotted.split(".")
        settings[section].pop(key, None)
    return settings


def study_differences(folder: Path, scenes: str, settings: dict) -> list[str]:
    """Why results in ``folder`` were not made by this study (scene plan, pretraining settings);
    empty when they were."""
    stamps = {name: folder / name for name in (SCENES_STAMP, PRETRAINING_STAMP)}
    missing = [f"no {name}" for name, path in stamps.items() if not path.exists()]
    if missing:
        return missing
    differences = [] if stamps[SCENES_STAMP].read_text() == scenes else [f"other scenes ({SCENES_STAMP} differs)"]
    return differences + config_differences(json.loads(stamps[PRETRAINING_STAMP].read_text()), settings)


def write_study_stamps(folder: Path, scenes: str, settings: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCENES_STAMP).write_text(scenes)
    (folder / PRETRAINING_STAMP).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def forget_records_of_another_study(runs: Path, data: Path, plan: DemoPlan) -> None:
    """An interrupted study resumes from its eval records, but only if they were made on the same
    scenes with the same pretraining settings: other records (fewer held-out scenes, another EMA)
    are deleted, not mixed in."""
    scenes, settings = (data / "demo_plan.json").read_text(), pretraining_settings(plan, data)
    if runs.exists():
        differences = study_differences(runs, scenes, settings)
        if differences:
            log(f"{runs}: eval records of another study ({'; '.join(differences)}); evaluating again")
            shutil.rmtree(runs)
    write_study_stamps(runs, scenes, settings)


def evaluated(runs: Path, method: str, plan: DemoPlan) -> bool:
    """Whether every task of the plan has a record for this method (an interrupted study resumes)."""
    from evals.results import read_runs

    done = {r["task"] for r in read_runs(runs) if r["method"] == method} if runs.exists() else set()
    return {TASK_RECORDS[t] for t in plan.tasks} <= done


def write_ablation_report(runs: Path, out: Path, command: str, seeds_in_command: bool = False) -> Path:
    """Every variant evaluated in ``runs`` or published in ``out``, whichever ``--variants`` this
    call trained: a study of a few variants adds to the report, it does not narrow it.
    ``seeds_in_command``: the report is rebuilt from records, so ``command`` (the study's
    arguments without seeds) gets the seeds that made each row, rather than naming the rebuild."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def made_by(seed) -> str:
        return f"{command} --seeds {seed}" if seeds_in_command else command

    measured = per_seed_metrics(runs)
    measured = measured.assign(source="measured", command=[made_by(s) for s in measured.seed])
    evaluated_runs = sorted(set(zip(measured.method, measured.seed)), key=lambda r: (r[1], variant_order(r[0])))
    monitors = training_monitors(runs.parent, evaluated_runs)
    monitors = monitors.assign(source="measured", command=[made_by(s) for s in monitors.seed])
    published = published_rows(out, runs)
    per_seed = with_published(measured, published.get("per_seed"))
    monitors = with_published(monitors, published.get("monitors"))
    # A run's monitors were logged by the process that was then evaluated: same commit, machine.
    made_by_run = per_seed.groupby(["method", "seed"]).agg(git_commit=("git_commit", joined),
                                                          hardware=("hardware", joined)).reset_index()
    monitors = monitors.drop(columns=["git_commit", "hardware"], errors="ignore").merge(
        made_by_run, on=["method", "seed"], how="left")
    variants = sorted(set(per_seed.method), key=variant_order)

    stats = seed_stats(per_seed, command)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "ablations.csv"
    stats.to_csv(csv, index=False)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    monitors.to_csv(out / "monitors.csv", index=False)
    # Each variant against full TC-JEPA, after the three references against each other.
    comparisons = [(FULL, "I-JEPA"), (SHUFFLED, "I-JEPA"), (FULL, SHUFFLED),
                   *[(name, FULL) for name in variants if name not in (FULL, "I-JEPA", SHUFFLED)]]
    verdict = seed_verdict(per_seed, comparisons)
    verdict.assign(**provenance(per_seed, joined(per_seed.command))).to_csv(out / "verdict.csv", index=False)
    for stamp in (SCENES_STAMP, PRETRAINING_STAMP):
        shutil.copyfile(runs / stamp, out / stamp)

    # Means over the seeds every variant has: a reference with extra seeds would otherwise sit
    # apart from variants measured on fewer (seed effects move all methods together).
    common = sorted(set.intersection(*(set(g.seed) for _, g in per_seed.groupby("method"))))
    shown = seed_stats(per_seed[per_seed.seed.isin(common)], command) if common else stats
    seeds_note = f"seeds {', '.join(map(str, common))}" if common else "all seeds"
    # The third panel says whether the predictor read the captions at all, next to what that
    # did to the frozen features.
    text_gain = monitors[monitors.seed.isin(common)] if common else monitors
    text_gain = text_gain.groupby("method").text_gain.agg(["mean", "std"]).reset_index()
    panels = [
        (shown[(shown.task == "in1k_linear") & (shown.metric == "top1")], "linear probe top-1", "tab:blue"),
        (shown[(shown.task == "ade20k_linear") & (shown.metric == "mIoU")], "linear segmentation mIoU", "tab:blue"),
        (text_gain, "text gain at the end of pretraining", "tab:orange"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 0.45 * len(variants) + 1.5), sharey=True)
    for ax, (table, title, color) in zip(axes, panels):
        rows = table.set_index("method").reindex(variants)
        # Points, not bars from zero: the differences are a few points on a ~20-point scale.
        ax.errorbar(rows["mean"], range(len(variants)), xerr=rows["std"].fillna(0), fmt="o", color=color, capsize=3)
        lines = [(name, style) for name, style in (("I-JEPA", "dotted"), (FULL, "dashed"))
                 if pd.notna(rows["mean"].get(name))]
        for name, style in lines:
            ax.axvline(rows["mean"][name], color="gray", linestyle=style, linewidth=1)
        ax.set_yticks(range(len(variants)), variants)
        legend = "; ".join(f"{style} {name}" for name, style in lines)
        ax.set_title(f"{title}\n(mean ± std over {seeds_note}; {legend})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=100)
    plt.close(fig)
    log(f"ablations: {csv}, {out / 'ablations.png'}")
    return csv


def published_rows(out: Path, runs: Path) -> dict:
    """Rows an earlier study published in ``out`` (per_seed / monitors CSVs), e.g. seeds run on
    another machine whose records are gone. They count only if made on the same scenes with the
    same pretraining settings."""
    import pandas as pd

    tables = {name: out / f"{name}.csv" for name in ("per_seed", "monitors") if (out / f"{name}.csv").exists()}
    if not tables:
        return {}
    differences = study_differences(out, (runs / SCENES_STAMP).read_text(),
                                    json.loads((runs / PRETRAINING_STAMP).read_text()))
    if differences:
        raise SystemExit(f"{out}: holds results of another study than {runs} ({'; '.join(differences)}); "
                         f"pass another --out, or the --set that study used, or delete {out} to start afresh")
    return {name: pd.read_csv(csv) for name, csv in tables.items()}


def variant_order(name: str) -> tuple:
    """VARIANTS' order; a variant published earlier under a name no longer defined goes last."""
    return (list(VARIANTS).index(name), "") if name in VARIANTS else (len(VARIANTS), name)


def with_published(measured, published):
    """Measured rows plus the published rows of (method, seed) pairs not measured here: seeds
    measured here replace their published rows."""
    import pandas as pd

    if published is None or published.empty:
        return measured
    here = set(zip(measured.method, measured.seed))
    kept = published[[(m, s) not in here for m, s in zip(published.method, published.seed)]]
    merged = pd.concat([kept, measured], ignore_index=True) if len(measured) else kept
    return merged.sort_values(["seed", "method"], key=lambda c: c.map(variant_order) if c.name == "method" else c,
                              kind="stable").reset_index(drop=True)


def training_monitors(work: Path, runs: list[tuple[str, int]]):
    """What each encoder's pretraining ended with (its last logged step and last probe
    monitors): whether the predictor read the captions (text gain), whether its word attention
    stayed selective (entropy / uniform entropy, 1 = uniform), and the grounding cosines."""
    import pandas as pd

    from tcjepa.train.monitors import read_jsonl

    rows = []
    for name, seed in runs:
        records = read_jsonl(variant_run_dir(name, work, int(seed)) / "metrics.jsonl")
        train = [r for r in records if "loss_pred" in r]
        probe = [r for r in records if "probe_loss" in r]
        if not train:
            continue
        row = {"method": name, "seed": int(seed), "step": train[-1]["step"], "loss_pred": train[-1]["loss_pred"]}
        cosines = train[-1].get("positive_cosine_fraction")
        row["positive_cosine_fraction"] = sum(cosines) / len(cosines) if cosines else None
        if probe:
            row["text_gain"] = probe[-1].get("text_gain")
            entropy = probe[-1].get("attention_entropy")
            uniform = probe[-1].get("attention_entropy_uniform")  # runs logged before this monitor lack it
            row["attention_entropy_vs_uniform"] = sum(entropy) / len(entropy) / uniform if entropy and uniform else None
            row["target_std"] = probe[-1].get("probe_target_std")
        rows.append(row)
    columns = ["method", "seed", "step", "loss_pred", "text_gain", "attention_entropy_vs_uniform",
               "positive_cosine_fraction", "target_std"]
    return pd.DataFrame(rows).reindex(columns=columns)


def variant_run_dir(name: str, work: Path, seed: int) -> Path:
    return run_directories(work, seed, shuffled=True).get(name, work / f"tcjepa-{slug(name)}-s{seed}")


def without_options(argv: list[str], *options: str) -> list[str]:
    """argv less the given options and their values (``--seeds 0 1``, ``--seeds=0``)."""
    kept, dropping = [], False
    for arg in argv:
        if arg.startswith("--"):
            dropping = arg.split("=", 1)[0] in options
        if not dropping:
            kept.append(arg)
    return kept


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.ablations", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME",
                   help=f"variants to run (default: all): {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds (default: 0 1 2)")
    p.add_argument("--steps", type=int, help="pretraining steps per encoder (default: the demo's)")
    p.add_argument("--data", type=Path, default=REPO / "data/scenes", help="scenes folder (default: data/scenes)")
    p.add_argument("--work", type=Path, default=REPO / "runs/demo",
                   help="runs folder, shared with the demo to reuse its encoders (default: runs/demo)")
    p.add_argument("--out", type=Path, default=REPO / "results/studies/ablations", help="default: results/studies/ablations")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant, e.g. --set optim.ema=[0.996,1.0] (the published "
                        "study's EMA; repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the CSVs and plot from the eval records already made (every seed found) and "
                        "the rows already published in --out, training nothing")
    args = p.parse_args(argv)
    plan = DemoPlan(seeds=args.seeds, tasks=["linear", "ade20k"], config_overrides=args.overrides)
    if args.steps:
        plan.train_steps = args.steps
    argv = argv if argv is not None else sys.argv[1:]
    if args.report_only:  # name the study that made the records, not this rebuild
        argv = without_options(argv, "--report-only", "--seeds")
    run_ablations(plan, args.variants, args.data, args.work, args.out,
                  command=" ".join(["python -m evals.ablations", *argv]), report_only=args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
