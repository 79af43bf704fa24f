"""What a JEPA run should be watched by: metric files, TensorBoard, and the text monitors.

- ``MetricsLogger`` appends one JSON line per logged step (and a CSV with the same columns)
  and mirrors scalars to TensorBoard when it is installed and enabled.
- ``probe_monitors`` runs the predictor on a fixed probe batch: text gain (prediction loss
  with captions shuffled across the batch minus loss with the true captions: positive when
  the predictor uses the text), cross-attention entropy, collapse check (target std).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from ..data.batch import JEPABatch
from ..models.jepa import JEPA
from ..models.losses import prediction_loss, token_spread
from .checkpoint import atomic_write
from .distributed import unsharded

log = logging.getLogger("tcjepa.train")


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.jsonl_path = out_dir / "metrics.jsonl"
        self.csv_path = out_dir / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        if resume_step:
            _truncate_after(self.jsonl_path, resume_step)  # a resumed run rewrites what it redoes
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step or None)
            except ImportError:
                self.writer = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, step)
                elif isinstance(v, list):
                    for i, vi in enumerate(v):
                        self.writer.add_scalar(f"{k}/{i}", vi, step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        write_csv(read_jsonl(self.jsonl_path), self.csv_path)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().float().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def read_jsonl(path: Path, drop_cut_off_tail: bool = False) -> list[dict]:
    """Rows of a metrics log. A line that is not JSON is an error naming the file and line,
    except the last one with ``drop_cut_off_tail``: an append cut short by a crash or power
    loss, which a resumed run rewrites anyway."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if drop_cut_off_tail and i == len(lines):
                log.warning("%s: dropping the cut-off last line %d (%s)", path, i, e.msg)
                continue
            raise ValueError(f"{path}: line {i} is not a JSON metrics row ({e.msg})") from e
    return rows


def _truncate_after(path: Path, step: int) -> None:
    rows = [r for r in read_jsonl(path, drop_cut_off_tail=True) if r["step"] <= step]
    # A crash here leaves the old log or the new one, never half of it.
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_csv(rows: list[dict], path: Path) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})


def attention_entropy(attention: list[torch.Tensor], word_mask: torch.Tensor) -> list[float]:
    """Mean entropy (nats) of each conditioned layer's word distribution, and its maximum
    possible value is log(#words): low = patches attend to few words."""
    out = []
    for p in attention:
        h = -(p.clamp_min(1e-12).log() * p).sum(-1)  # (B, N, Q)
        out.append(h.mean().item())
    return out


@torch.no_grad()
def probe_monitors(model: JEPA, batch: JEPABatch) -> dict[str, Any]:
    """Monitors on a fixed probe batch (already on the model's device)."""
    # Under FSDP2 this calls model methods that are not forward(): without gathering the root's
    # parameters first the probe fails on DTensor shards, at the last step of every FSDP run.
    with unsharded(model):
        return _probe_monitors(model, batch)


def _probe_monitors(model: JEPA, batch: JEPABatch) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    target = model.targets(batch.images, batch.target_idx)
    kind = model.cfg.loss.pred_loss
    metrics: dict[str, Any] = {"probe_target_std": token_spread(target).item()}
    if model.text_enabled:
        out = model.predict(batch, return_attention=True)
        true_loss = prediction_loss(out.pred, target, kind).item()
        shuffled = model.predict(batch.with_text(batch.text.roll(1, 0), batch.word_mask.roll(1, 0)))
        shuffled_loss = prediction_loss(shuffled.pred, target, kind).item()
        metrics.update(
            probe_loss=true_loss,
            probe_loss_shuffled_text=shuffled_loss,
            text_gain=shuffled_loss - true_loss,
        )
        if out.attention:
            metrics["attention_entropy"] = attention_entropy(out.attention, out.word_mask)
            words = out.word_mask.sum(-1).float().clamp_min(1).log().mean().item()
            metrics["attention_entropy_uniform"] = words
    else:
        out = model.predict(batch)
        metrics["probe_loss"] = prediction_loss(out.pred, target, kind).item()
    model.train(was_training)
    return metrics


# Below this share of positive patch-word cosines in every conditioned layer, warn.
GROUNDING_COLLAPSE_FRACTION = 1e-3


def grounding_collapse_warning(step: int, positive_fraction: list[float], sparse_weight: float,
                               consist_weight: float) -> Optional[str]:
    """The known failure mode of docs/SPEC.md section 2, as a warning, or None: (almost) no patch-word cosine is
    positive in any conditioned layer, so both grounding regularizers are (almost) zero and give
    (almost) no gradient. With the raw keys of the embedded scenes this happens within ~10 steps
    (README, Results)."""
    if not positive_fraction or sparse_weight == consist_weight == 0:
        return None
    if max(positive_fraction) >= GROUNDING_COLLAPSE_FRACTION:
        return None
    return (
        f"step {step}: under {100 * GROUNDING_COLLAPSE_FRACTION:g} % of patch-word cosines are "
        "positive in every conditioned layer, so the grounding regularizers are (almost) zero and "
        "no longer train anything (docs/SPEC.md's known failure mode: queries at negative cosine to every "
        "word key). Their large early gradients can also stay in the encoder's Adam state for "
        "hundreds of steps and change what the encoder learns (on the embedded scenes that "
        "carries TC-JEPA's whole gain over I-JEPA). "
        "model.grounding_keys=centered keeps them active; see README, Results"
    )
