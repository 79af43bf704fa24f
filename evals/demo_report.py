"""The demo's report: per-seed eval runs -> comparison CSV + markdown, with the seed-spread verdict, and its pictures.

The question the demo asks: is TC-JEPA ahead of I-JEPA by more than the spread over
pretraining seeds, and does the lead vanish when captions are shuffled across images? The
verdict section answers it from the numbers, whichever way they fall.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

SHUFFLED = "TC-JEPA (shuffled captions)"
UNTRAINED = "untrained"
KEPT = {("in1k_linear", "top1"), ("in1k_knn", "top1"), ("in1k_attentive", "top1"), ("ade20k_linear", "mIoU"),
        ("ade20k_linear", "aAcc"),
        ("coco_det", "bbox_AP"), ("coco_det", "bbox_AP50"), ("coco_det", "segm_AP")}
# (method, baseline): each row of the verdict compares the first with the second.
COMPARISONS = (("TC-JEPA", "I-JEPA"), (SHUFFLED, "I-JEPA"), ("TC-JEPA", SHUFFLED), ("I-JEPA", UNTRAINED),
               ("TC-JEPA", UNTRAINED))


def per_seed_metrics(runs: Path) -> pd.DataFrame:
    """One row per (seed, method, task, metric) from ``runs/seed<k>/`` eval records."""
    from evals.results import read_runs

    rows = []
    for seed_dir in sorted(runs.glob("seed*")):
        for r in read_runs(seed_dir):
            for name, value in r["metrics"].items():
                if (r["task"], name) in KEPT and value is not None:
                    rows.append({"method": r["method"], "task": r["task"], "metric": name, "value": value,
                                 "seed": int(seed_dir.name[4:]), "git_commit": r["git_commit"],
                                 "hardware": r["hardware"]})
    return pd.DataFrame(rows, columns=["method", "task", "metric", "value", "seed", "git_commit", "hardware"])


def seed_verdict(per_seed: pd.DataFrame, comparisons=COMPARISONS) -> pd.DataFrame:
    """For each comparison and metric: mean difference, the larger of the two seed spreads
    (sample std), the paired per-seed differences, and whether the difference exceeds the spread.
    ``paired_t`` (mean paired difference over its standard error) is the sharper test when the
    seeds move both methods together, as a shared initialisation does."""
    rows = []
    for (task, metric), df in per_seed.groupby(["task", "metric"]):
        table = df.pivot_table(index="seed", columns="method", values="value")
        for method, baseline in comparisons:
            if method not in table or baseline not in table:
                continue
            pair = table[[method, baseline]].dropna()
            if pair.empty:
                continue
            delta = pair[method].mean() - pair[baseline].mean()
            spread = max(pair[method].std(ddof=1), pair[baseline].std(ddof=1)) if len(pair) > 1 else float("nan")
            paired = pair[method] - pair[baseline]
            if len(pair) < 2:
                verdict = "one seed: no spread to compare with"
            elif abs(delta) > spread:
                verdict = ("ahead" if delta > 0 else "behind") + " beyond seed spread"
            else:
                verdict = "within seed spread"
            rows.append({"task": task, "metric": metric, "method": method, "baseline": baseline,
                         "seeds": len(pair), "delta": delta, "seed_spread": spread,
                         "paired_deltas": " ".join(f"{d:+.2f}" for d in paired),
                         "paired_t": paired_t(paired), "verdict": verdict})
    return pd.DataFrame(rows)


def paired_t(deltas: pd.Series) -> float:
    """Mean over standard error of the per-seed differences (nan below two seeds or if all equal)."""
    if len(deltas) < 2:
        return float("nan")
    sem = deltas.std(ddof=1) / len(deltas) ** 0.5
    return deltas.mean() / sem if sem > 0 else float("nan")


def joined(values) -> str:
    """Distinct values in order of appearance, ' ; '-separated: a table row made by several runs
    (seeds on different commits or machines) names all of them, not the first."""
    return " ; ".join(dict.fromkeys(str(v) for v in values if pd.notna(v)))


def provenance(per_seed: pd.DataFrame, command: str) -> dict:
    """Columns every measured table carries: what made the numbers, at which commit, on what."""
    return {"source": "measured", "command": command, "git_commit": joined(per_seed.get("git_commit", [])),
            "hardware": joined(per_seed.get("hardware", []))}


def seed_stats(per_seed: pd.DataFrame, command: str) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (method, task, metric), with provenance columns.
    Each row's provenance comes from its own seeds: the per-seed ``command`` column where there
    is one (seeds measured by different runs), else ``command``."""
    keys = ["method", "task", "metric"]
    stats = per_seed.groupby(keys)["value"].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    rows = per_seed if "command" in per_seed else per_seed.assign(command=command)
    made_by = rows.groupby(keys).agg(command=("command", joined), git_commit=("git_commit", joined),
                                     hardware=("hardware", joined)).reset_index()
    return stats.merge(made_by, on=keys).assign(source="measured")[
        [*keys, "mean", "std", "count", "source", "command", "git_commit", "hardware"]]


def summarize(runs: Path, out: Path, command: str) -> Path:
    """Write ``comparison.csv`` (mean, std, count per method/task/metric), ``verdict.csv`` and
    ``comparison.md`` (both tables, with the command, commit and hardware that made them)."""
    from evals.tables import to_markdown

    per_seed = per_seed_metrics(runs)
    stats = seed_stats(per_seed, command)
    made_by = provenance(per_seed, command)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "comparison.csv"
    stats.to_csv(csv, index=False)
    per_seed.assign(source="measured", command=command).to_csv(out / "per_seed.csv", index=False)
    verdict = seed_verdict(per_seed)
    verdict.assign(**made_by).to_csv(out / "verdict.csv", index=False)

    cells = [f"{m:.2f} ± {s:.2f} (n={int(c)})" for m, s, c in zip(stats["mean"], stats["std"], stats["count"])]
    wide = stats.assign(cell=cells).pivot_table(index="method", columns=["task", "metric"], values="cell",
                                                aggfunc="first")
    wide.columns = [f"{t} {m}" for t, m in wide.columns]
    note = (f"Mean ± sample std over pretraining seeds (n = seeds). Measured by `{command}` at commit "
            f"{made_by['git_commit']} on {made_by['hardware']}. Chance level of the 12-way linear probe: "
            "8.33 top-1.\n\n")
    text = to_markdown(wide.reset_index(), "Demo: frozen encoders on the synthetic captioned scenes")
    text = text.replace("\n\n", "\n\n" + note, 1)
    if len(verdict):
        shown = verdict.assign(delta=verdict["delta"].map("{:+.2f}".format),
                               seed_spread=verdict["seed_spread"].map("{:.2f}".format),
                               paired_t=verdict["paired_t"].map(lambda t: "nan" if pd.isna(t) else f"{t:+.1f}"))
        text += "\n" + to_markdown(shown, "Verdict: differences against the spread over seeds")
        text += ("\n`delta` = mean(method) - mean(baseline); `seed_spread` = the larger sample std of the two; "
                 "`paired_deltas` = per-seed differences (same seed, same initialisation); "
                 "`paired_t` = their mean over its standard error.\n")
    (out / "comparison.md").write_text(text)
    return csv


def draw_pictures(run_dirs: dict[str, Path], tcjepa_cfg, tcjepa_ckpt: Path, out: Path, text_cache: Path) -> None:
    """The report's pictures: every run's training curves, and the patch-word grounding maps
    of the TC-JEPA checkpoint on four training scenes."""
    import torch

    from tcjepa.data.loader import build_pretrain_loader
    from tcjepa.models.jepa import JEPA
    from tcjepa.text.cache import TextFeatureCache
    from tcjepa.text.encoder import FrozenTextEncoder
    from tcjepa.train.checkpoint import load_checkpoint
    from tcjepa.viz import plot_grounding_maps, plot_training_curves

    plot_training_curves(run_dirs, out / "training_curves.png")
    state = load_checkpoint(tcjepa_ckpt)
    model = JEPA(tcjepa_cfg)
    model.encoder.load_state_dict(state["encoder"])
    model.target_encoder.load_state_dict(state["target_encoder"])
    model.predictor.load_state_dict(state["predictor"])
    cache = TextFeatureCache(text_cache)
    loader, _, dataset = build_pretrain_loader(tcjepa_cfg, model.grid_size, text_lookup=cache.lookup, batch_size=8)
    batch = loader.collate_fn([dataset[(i, 0)] for i in range(4)])
    batch.text = batch.text.float()
    tokenizer = FrozenTextEncoder(tcjepa_cfg.text.encoder, max_words=tcjepa_cfg.text.max_words).tokenizer
    tokens = [tokenizer.convert_ids_to_tokens(tokenizer(c[0], truncation=True,
                                                        max_length=tcjepa_cfg.text.max_words)["input_ids"])
              for c in batch.captions]
    with torch.no_grad():
        plot_grounding_maps(model, batch, tokens, out / "grounding_maps.png")
