"""Attentive probe: a learned query cross-attends to the frozen patch tokens (V-JEPA style).

One block, pre-norm: ``q += CrossAttn(LN q, LN tokens)``, ``q += MLP(LN q)``, then
``Linear(LN q)`` to the classes. The tokens are the last block's patch tokens after the
final norm, cached once (fp16). Probes for every lr of the grid train in one pass
(``evals.probe_training``); the choice of lr is made on a held-out part of train or on val.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from evals.features import FeatureRows, FeatureSet
from evals.probe_training import HeadSchedule, evaluate_heads, train_heads
from evals.linear import SELECTIONS, split_holdout

LRS = (1e-3, 3e-4)


class AttentivePooler(nn.Module):
    """Learned query -> one cross-attention block over the tokens -> linear classifier."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_q, self.norm_kv, self.norm_mlp, self.norm_out = (nn.LayerNorm(dim) for _ in range(4))
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(len(tokens), -1, -1)
        kv = self.norm_kv(tokens)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        q = q + self.mlp(self.norm_mlp(q))
        return self.classifier(self.norm_out(q[:, 0]))


class AttentiveGrid(nn.Module):
    """One attentive probe per lr; forward returns one logits tensor per probe."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, lrs: Sequence[float]):
        super().__init__()
        self.lrs = list(lrs)
        self.probes = nn.ModuleList(AttentivePooler(dim, num_classes, num_heads) for _ in self.lrs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [probe(inputs["tokens"]) for probe in self.probes]

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(p.parameters()), "lr": lr, "weight_decay": weight_decay}
                for p, lr in zip(self.probes, self.lrs)]


def default_heads(dim: int) -> int:
    """64-wide heads as in ViTs, at least one, dividing the width."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _tokens(features: FeatureSet, what: str) -> np.ndarray:
    tokens = features.get("tokens")
    if tokens is None:
        raise ValueError(f"{what} features hold no patch tokens; extract them with keep_tokens=True")
    return tokens


def token_rows(features: FeatureSet, rows=None) -> FeatureRows:
    """Patch tokens (N, L, C) of some rows, read from the cache a block at a time."""
    return FeatureRows(features, ["tokens"], rows)


def attentive_probe(train: FeatureSet, val: FeatureSet, lrs: Sequence[float] = LRS, epochs: int = 10,
                    batch_size: int = 64, weight_decay: float = 0.05, num_heads: int = 0,
                    selection: str = "holdout", holdout_fraction: float = 0.1, seed: int = 0,
                    device: str = "cpu") -> dict:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    schedule = HeadSchedule(epochs, batch_size, "adamw", weight_decay, seed=seed)
    torch.manual_seed(seed)
    dim = _tokens(train, "train").shape[-1]
    _tokens(val, "val")  # both splits must hold tokens
    num_classes = int(max(np.max(train.labels), np.max(val.labels))) + 1
    fit_idx, hold_idx = (split_holdout(len(train), holdout_fraction, seed) if selection == "holdout"
                         else (None, None))
    fit = token_rows(train, fit_idx)
    evaluations = {"val": token_rows(val)} | ({"holdout": token_rows(train, hold_idx)} if hold_idx is not None else {})
    heads = num_heads or default_heads(dim)
    model = AttentiveGrid(dim, num_classes, heads, lrs).to(device)
    curves = train_heads(model, model.param_groups(weight_decay), fit, [f"attentive@lr={lr:g}" for lr in lrs],
                         schedule, evaluations, device, "attentive probes")
    scores = {split: evaluate_heads(model, rows, device, batch_size=256) for split, rows in evaluations.items()}
    chooser = scores.get("holdout", scores["val"])
    best = int(np.argmax([s["top1"] for s in chooser]))
    grid = [{"lr": lr, **{f"{split}_top1": s[i]["top1"] for split, s in scores.items()},
             "val_top5": scores["val"][i]["top5"]} for i, lr in enumerate(lrs)]
    return {
        "protocol": "attentive",
        "top1": scores["val"][best]["top1"],
        "top5": scores["val"][best]["top5"],
        "selected": {"features": "patch tokens of the last block", "lr": lrs[best]},
        "selected_on": (f"holdout ({holdout_fraction:.0%} of train, seed {seed}); probes trained on the rest"
                        if hold_idx is not None else "val (the reported split itself)"),
        "grid": grid,
        "curves": curves,
        "settings": {
            "tokens": "patch tokens of the last block after the final norm (fp16 cache)",
            "block": "learned query, pre-norm cross-attention + MLP (ratio 4), LayerNorm, linear classifier",
            "num_heads": heads, "lrs": list(lrs), "epochs": epochs, "batch_size": batch_size,
            "optimizer": "adamw", "weight_decay": weight_decay, "schedule": "cosine to 0, per step",
            "selection": selection, "holdout_fraction": holdout_fraction if hold_idx is not None else None,
            "seed": seed, "num_classes": num_classes, "num_train": len(fit), "num_val": len(evaluations["val"]),
        },
    }
