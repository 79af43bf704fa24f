"""Weighted k-NN classification on cached features, as in DINO's evaluation.

Features are L2-normalized; each query's k nearest training examples by cosine similarity
vote for their class with weight ``exp(similarity / T)`` (T = 0.07). Every (feature set,
k) point of the grid is scored; the point is chosen on a held-out part of train (neighbours
from the rest) or on val, and val top-1 / top-5 are reported for it with the full train
split as the neighbour bank.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from evals.features import FeatureSet
from evals.probe_training import topk_correct
from evals.linear import SELECTIONS, split_holdout

KS = (10, 20)
TEMPERATURE = 0.07


@torch.no_grad()
def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
               ks: Sequence[int], num_classes: int, temperature: float = TEMPERATURE,
               chunk: int = 1024) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 (percent) of temperature-weighted k-NN votes for every k in ``ks``."""
    bank = F.normalize(bank.float(), dim=1)
    k_max = min(max(ks), len(bank))
    counts = {k: {1: 0, 5: 0} for k in ks}
    for s in range(0, len(queries), chunk):
        q = F.normalize(queries[s:s + chunk].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k_max, dim=1)  # sorted, nearest first
        weights = (sims / temperature).exp()
        neighbour_labels = bank_labels[idx]
        for k in ks:
            votes = torch.zeros(len(q), num_classes, device=q.device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            for n, hits in topk_correct(votes, query_labels[s:s + chunk]).items():
                counts[k][n] += hits
    total = max(len(queries), 1)
    return {k: {"top1": 100.0 * c[1] / total, "top5": 100.0 * c[5] / total} for k, c in counts.items()}


def knn_probe(
    train: FeatureSet,
    val: FeatureSet,
    feature_sets: Sequence[str] = ("patch_mean:last1",),
    ks: Sequence[int] = KS,
    temperature: float = TEMPERATURE,
    selection: str = "holdout",
    holdout_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    y_train = torch.from_numpy(np.array(train.labels)).long().to(device)
    y_val = torch.from_numpy(np.array(val.labels)).long().to(device)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    fit_idx, hold_idx = (split_holdout(len(train), holdout_fraction, seed) if selection == "holdout"
                         else (None, None))
    grid = []
    for fs in tqdm(feature_sets, desc="k-NN", unit="feature set"):
        x_train = torch.from_numpy(np.array(train.get(fs), dtype=np.float32)).to(device)
        x_val = torch.from_numpy(np.array(val.get(fs), dtype=np.float32)).to(device)
        on_val = knn_scores(x_train, y_train, x_val, y_val, ks, num_classes, temperature)
        on_hold: Optional[dict] = None
        if hold_idx is not None:
            fit, hold = torch.from_numpy(fit_idx).to(device), torch.from_numpy(hold_idx).to(device)
            on_hold = knn_scores(x_train[fit], y_train[fit], x_train[hold], y_train[hold], ks, num_classes, temperature)
        for k in ks:
            row = {"features": fs, "k": k, "val_top1": on_val[k]["top1"], "val_top5": on_val[k]["top5"]}
            if on_hold is not None:
                row["holdout_top1"] = on_hold[k]["top1"]
            grid.append(row)
    key = "holdout_top1" if hold_idx is not None else "val_top1"
    best = int(np.argmax([r[key] for r in grid]))
    return {
        "protocol": "knn",
        "top1": grid[best]["val_top1"],
        "top5": grid[best]["val_top5"],
        "selected": {"features": grid[best]["features"], "k": grid[best]["k"]},
        "selected_on": (f"holdout ({holdout_fraction:.0%} of train, seed {seed}); neighbours from the rest"
                        if hold_idx is not None else "val (the reported split itself)"),
        "grid": grid,
        "settings": {
            "feature_sets": list(feature_sets), "ks": list(ks), "temperature": temperature,
            "similarity": "cosine (L2-normalized features)", "votes": "sum of exp(similarity / T) per class",
            "bank": "the whole train split", "selection": selection, "seed": seed, "num_classes": num_classes,
            "num_train": int(len(y_train)), "num_val": int(len(y_val)),
        },
    }
