"""Training a grid of probe heads in one pass over cached features, with learning curves.

The heads share no parameters and the loss is the sum of their losses, so each head gets
exactly its own gradient; each head has its own lr (its own optimizer group) and all follow
one cosine schedule. Data comes as :class:`evals.features.FeatureRows` (read from the cache
a block at a time). After every epoch each head's mean training loss and its top-1 on the
evaluation splits are recorded (``curves``), the rows ``evals.curves`` writes to CSV and
TensorBoard beside the result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from evals.features import FeatureRows


@dataclass
class HeadSchedule:
    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0

    def check(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_heads(model: nn.Module, rows: FeatureRows, device, batch_size: int = 4096) -> list[dict]:
    """Top-1 / top-5 (percent) of every head of ``model`` on ``rows``."""
    was_training = model.training
    model.eval()
    counts = None
    for x, y in rows.batches(batch_size, device):
        logits = model(x)
        counts = counts or [{1: 0, 5: 0} for _ in logits]
        for c, lg in zip(counts, logits):
            for k, v in topk_correct(lg, y).items():
                c[k] += v
    model.train(was_training)
    n = max(len(rows), 1)
    return [{"top1": 100.0 * c[1] / n, "top5": 100.0 * c[5] / n} for c in counts or []]


def batches_per_epoch(rows: FeatureRows, batch_size: int) -> int:
    """Minibatches ``rows.batches`` yields: it never lets a batch straddle two blocks."""
    full, rest = divmod(len(rows), rows.block_rows)
    return full * math.ceil(rows.block_rows / batch_size) + math.ceil(rest / batch_size)


def train_heads(model: nn.Module, groups: list[dict], fit: FeatureRows, names: Sequence[str],
                schedule: HeadSchedule, evaluations: dict[str, FeatureRows], device, desc: str) -> list[dict]:
    """Train every head of ``model`` (its forward returns one logits tensor per head, in the
    order of ``names``; ``groups`` one optimizer group per head); returns the curves."""
    schedule.check()
    opt = (torch.optim.SGD(groups, momentum=schedule.momentum) if schedule.optimizer == "sgd"
           else torch.optim.AdamW(groups))
    total = max(1, schedule.epochs * batches_per_epoch(fit, schedule.batch_size))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator(device="cpu").manual_seed(schedule.seed)
    curves = []
    model.train()
    for epoch in tqdm(range(1, schedule.epochs + 1), desc=f"{desc} ({len(names)} in one pass)", unit="epoch"):
        sums, batches = torch.zeros(len(names)), 0
        for x, y in fit.batches(schedule.batch_size, device, generator):
            losses = torch.stack([loss_fn(lg, y) for lg in model(x)])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            lr_schedule.step()
            sums += losses.detach().cpu()
            batches += 1
        scores = {split: evaluate_heads(model, rows, device) for split, rows in evaluations.items()}
        for i, name in enumerate(names):
            row = {"epoch": epoch, "head": name, "lr": opt.param_groups[i]["lr"], "loss": float(sums[i]) / batches}
            curves.append(row | {f"{split}_top1": s[i]["top1"] for split, s in scores.items()})
    model.eval()
    return curves
