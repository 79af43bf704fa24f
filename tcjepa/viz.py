"""Pictures people would rather look at than read: training curves and patch-word grounding."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .train.monitors import read_jsonl  # noqa: E402

CURVES = [
    ("loss_pred", "prediction loss"),
    ("text_gain", "text gain (shuffled - true captions)"),
    ("loss_sparse", "sparsity term"),
    ("loss_consist", "consistency term"),
    ("positive_cosine_fraction", "positive patch-word cosines (mean over layers)"),
    ("probe_target_std", "target feature std (collapse check)"),
]


def plot_training_curves(runs: dict[str, Path], out_png: Path) -> Path:
    """runs: label -> run folder with metrics.jsonl. One panel per monitored quantity."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colours = {label: plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")(i) for i, label in enumerate(runs)}
    for ax, (key, title) in zip(axes.flat, CURVES):  # a run keeps its colour in every panel
        for label, folder in runs.items():
            rows = [r for r in read_jsonl(Path(folder) / "metrics.jsonl") if key in r]
            if not rows:
                continue
            ys = [np.mean(r[key]) if isinstance(r[key], list) else r[key] for r in rows]
            ax.plot([r["step"] for r in rows], ys, label=label, color=colours[label])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _denormalize(img: torch.Tensor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> np.ndarray:
    x = img.cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def plot_grounding_maps(
    model,
    batch,
    word_tokens: Sequence[Sequence[str]],
    out_png: Path,
    num_images: int = 4,
    layer: int = -1,
) -> Path:
    """For a few images: the caption, and for each predictor token of target block 0 (context
    and target patches) the word of caption 0 it attends to most in one conditioned layer.

    ``word_tokens[b]`` are the tokens of image b's first caption, aligned with its features.
    """
    model.eval()
    out = model.predict(batch, return_attention=True)
    if not out.attention:
        raise ValueError("this model has no word cross-attention to draw (I-JEPA or a caption-level variant)")
    attn = out.attention[layer]  # (B, N, M*T, S)
    gh, gw = model.grid_size
    Kc = batch.context_idx.shape[1]
    B = min(num_images, attn.shape[0])
    fig, axes = plt.subplots(B, 2, figsize=(9, 3.6 * B), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for b in range(B):
        words = list(word_tokens[b])
        n_words = int(batch.word_mask[b, 0].sum())
        a = attn[b, 0, :, :n_words]  # tokens of caption 0
        Kt = batch.target_idx.shape[2]
        positions = torch.cat([batch.context_idx[b], batch.target_idx[b, 0]]).cpu()
        rows = torch.cat([torch.arange(Kc), torch.arange(Kc, Kc + Kt)])  # block 0 tokens
        is_target = torch.cat([torch.zeros(Kc, dtype=torch.bool), torch.ones(Kt, dtype=torch.bool)])
        valid = batch.context_valid
        if valid is not None:
            keep = torch.cat([valid[b].cpu(), torch.ones(Kt, dtype=torch.bool)])
            positions, rows, is_target = positions[keep], rows[keep], is_target[keep]
        top_weight, best = a[rows.to(a.device)].max(-1)
        best = best.cpu()
        grid = np.full((gh, gw), -1)
        hidden = np.zeros((gh, gw), dtype=bool)
        for pos, w, t in zip(positions.tolist(), best.tolist(), is_target.tolist()):
            grid[pos // gw, pos % gw] = w
            hidden[pos // gw, pos % gw] |= t
        axes[b, 0].imshow(_denormalize(batch.images[b]))
        caption = batch.captions[b][0] if batch.captions is not None else " ".join(words)
        axes[b, 0].set_title(_wrap(caption), fontsize=8)
        colours = np.ones((gh, gw, 3)) * 0.85
        used = sorted(set(grid[grid >= 0].tolist()))
        for w in used:
            colours[grid == w] = cmap(w % 20)[:3]
        axes[b, 1].imshow(colours, interpolation="nearest")
        ys, xs = np.nonzero(hidden)
        axes[b, 1].scatter(xs, ys, marker="x", c="k", s=12, label="target (masked) patch")
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(w % 20)) for w in used]
        axes[b, 1].legend(handles, [words[w] if w < len(words) else f"#{w}" for w in used],
                          fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        # How sharp the attention is decides whether the argmax means anything: near-uniform
        # attention (the regularizers' degenerate minimum, README "Results") draws noise.
        axes[b, 1].set_title(f"most-attended word per patch (caption 1)\nmean top weight "
                             f"{top_weight.mean().item():.2f}, uniform {1 / max(n_words, 1):.2f}", fontsize=8)
        for ax in axes[b]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _wrap(text: str, width: int = 60) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])
