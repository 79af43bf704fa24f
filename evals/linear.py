"""Linear probes on cached features.

``linear_probe``: every (feature set x learning rate) head trains in ONE pass over the
data, DINOv2-style (``evals.probe_training``): one module holds all heads, each with its own
lr, all on one cosine schedule. Feature sets are the protocols of ``evals.feature_protocols``
(patch mean, class token + patch mean, MAP output; last 1 or last 4 blocks), so the
backbones' own protocols compete in the same pass. The best head is chosen on
a held-out part of train (default) or on val; either way the choice is recorded, and
top-1 / top-5 on val are reported for that head.

``logreg_probe``: scikit-learn logistic regression over a C sweep, a second, cheap protocol.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from evals.features import FeatureRows, FeatureSet
from evals.probe_training import HeadSchedule, evaluate_heads, topk_correct, train_heads

SGD_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
ADAMW_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LOGREG_CS = (0.01, 0.1, 1.0, 10.0)
FEATURE_SETS = ("last1", "last4")
SELECTIONS = ("holdout", "val")


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = max(1, int(round(n * fraction)))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


class LinearHeadGrid(nn.Module):
    """One linear head per (feature set, lr)."""

    def __init__(self, dims: dict[str, int], lrs: Sequence[float], num_classes: int):
        super().__init__()
        self.points = [(fs, lr) for fs in dims for lr in lrs]
        self.heads = nn.ModuleList(nn.Linear(dims[fs], num_classes) for fs, _ in self.points)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [head(inputs[fs]) for head, (fs, _) in zip(self.heads, self.points)]

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(head.parameters()), "lr": lr, "weight_decay": weight_decay}
                for head, (_, lr) in zip(self.heads, self.points)]


def _choose(scores: list[float]) -> int:
    return int(np.argmax(scores))  # first of equals: the grid order is the tie-break


def head_name(features: str, lr: float) -> str:
    return f"{features}@lr={lr:g}"


def linear_probe(
    train: FeatureSet,
    val: FeatureSet,
    lrs: Optional[Sequence[float]] = None,
    feature_sets: Sequence[str] = FEATURE_SETS,
    epochs: int = 10,
    batch_size: int = 256,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    selection: str = "holdout",
    holdout_fraction: float = 0.1,
    standardize: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Every (feature set x lr) head in one pass; feature sets are names of
    ``evals.feature_protocols`` ('patch_mean:last4', 'cls_patch_mean:last1', ...)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    schedule = HeadSchedule(epochs, batch_size, optimizer, weight_decay, momentum, seed)
    schedule.check()
    lrs = tuple(lrs or (SGD_LRS if optimizer == "sgd" else ADAMW_LRS))
    torch.manual_seed(seed)
    num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    fit_idx, hold_idx = (split_holdout(len(train), holdout_fraction, seed) if selection == "holdout"
                         else (None, None))
    # Read from the (memory-mapped) cache a block at a time, never as a whole.
    fit = FeatureRows(train, feature_sets, fit_idx)
    val_rows = FeatureRows(val, feature_sets)
    hold = FeatureRows(train, feature_sets, hold_idx) if hold_idx is not None else None
    if standardize:
        moments = fit.moments()
        for rows in filter(None, (fit, val_rows, hold)):
            rows.standardize_with(moments)

    model = LinearHeadGrid(fit.dims, lrs, num_classes).to(device)
    evaluations = {"val": val_rows} | ({"holdout": hold} if hold is not None else {})
    curves = train_heads(model, model.param_groups(weight_decay), fit, [head_name(f, l) for f, l in model.points],
                         schedule, evaluations, device, "linear heads")

    val_scores = evaluate_heads(model, val_rows, device)
    hold_scores = evaluate_heads(model, hold, device) if hold is not None else None
    chooser = hold_scores if hold_scores is not None else val_scores
    best = _choose([s["top1"] for s in chooser])
    fs, lr = model.points[best]
    grid = []
    for i, (f, l) in enumerate(model.points):
        row = {"features": f, "lr": l, "val_top1": val_scores[i]["top1"], "val_top5": val_scores[i]["top5"]}
        if hold_scores is not None:
            row["holdout_top1"] = hold_scores[i]["top1"]
        grid.append(row)
    return {
        "protocol": "linear",
        "top1": val_scores[best]["top1"],
        "top5": val_scores[best]["top5"],
        "selected": {"features": fs, "lr": lr},
        "selected_on": (f"holdout ({holdout_fraction:.0%} of train, seed {seed}); heads trained on the rest"
                        if selection == "holdout" else "val (the reported split itself, as DINOv2 does)"),
        "grid": grid,
        "curves": curves,
        "settings": {
            "feature_sets": list(feature_sets), "lrs": list(lrs), "epochs": epochs, "batch_size": batch_size,
            "optimizer": optimizer, "momentum": momentum if optimizer == "sgd" else None,
            "weight_decay": weight_decay, "schedule": "cosine to 0, per step", "selection": selection,
            "holdout_fraction": holdout_fraction if selection == "holdout" else None,
            "standardize": standardize, "seed": seed, "num_classes": num_classes,
            "num_train": len(fit), "num_val": len(val_rows),
            "train_augmentation": "none (features cached once, center crop)",
        },
    }


def logreg_probe(
    train: FeatureSet,
    val: FeatureSet,
    cs: Sequence[float] = LOGREG_CS,
    feature_sets: Sequence[str] = ("last1",),
    selection: str = "holdout",
    holdout_fraction: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict:
    """scikit-learn LogisticRegression (lbfgs, multinomial) on standardized features, C swept."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    y_all = np.array(train.labels)  # copies: cached arrays are read-only memmaps
    fit_idx, hold_idx = (split_holdout(len(y_all), holdout_fraction, seed) if selection == "holdout"
                         else (np.arange(len(y_all)), None))
    y_val = np.array(val.labels)
    grid, fitted = [], []
    for fs in feature_sets:
        x_all = np.asarray(train.get(fs), dtype=np.float32)
        scaler = StandardScaler().fit(x_all[fit_idx])
        x_fit, x_val = scaler.transform(x_all[fit_idx]), scaler.transform(np.asarray(val.get(fs), dtype=np.float32))
        x_hold = scaler.transform(x_all[hold_idx]) if hold_idx is not None else None
        for c in tqdm(cs, desc=f"logreg C sweep ({fs})", unit="C"):
            clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x_fit, y_all[fit_idx])
            row = {"features": fs, "C": c, **{f"val_{k}": v for k, v in _sk_topk(clf, x_val, y_val).items()}}
            if x_hold is not None:
                row["holdout_top1"] = _sk_topk(clf, x_hold, y_all[hold_idx])["top1"]
            grid.append(row)
            fitted.append(clf)
    key = "holdout_top1" if hold_idx is not None else "val_top1"
    best = _choose([r[key] for r in grid])
    return {
        "protocol": "logreg",
        "top1": grid[best]["val_top1"],
        "top5": grid[best]["val_top5"],
        "selected": {"features": grid[best]["features"], "C": grid[best]["C"]},
        "selected_on": (f"holdout ({holdout_fraction:.0%} of train, seed {seed})" if hold_idx is not None
                        else "val (the reported split itself)"),
        "grid": grid,
        "settings": {
            "cs": list(cs), "feature_sets": list(feature_sets), "solver": "lbfgs", "max_iter": max_iter,
            "standardize": True, "selection": selection, "seed": seed,
            "num_train": int(len(fit_idx)), "num_val": int(len(y_val)),
        },
    }


def _sk_topk(clf, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    proba = torch.from_numpy(clf.predict_proba(x))
    # predict_proba columns follow clf.classes_; map back to label ids before comparing
    classes = torch.from_numpy(clf.classes_)
    full = torch.full((len(y), int(max(classes.max(), y.max())) + 1), -1.0, dtype=proba.dtype)
    full[:, classes] = proba
    counts = topk_correct(full, torch.from_numpy(y).long())
    return {"top1": 100.0 * counts[1] / len(y), "top5": 100.0 * counts[5] / len(y)}
