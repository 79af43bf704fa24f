"""I-JEPA multi-block masking, run in the data-loader workers, without the public code's pitfalls.

Per batch, one target block size and one context block size are drawn (as I-JEPA does, so
``target_idx`` needs no padding); scale and aspect ratio are independent draws. Per image:
M target blocks and one context block at uniform positions with *inclusive* upper bounds
(every patch reachable, full-size blocks possible); the context loses every target patch and
keeps at least ``min_keep`` patches (positions are redrawn otherwise). Contexts then share
one length: cut to the batch minimum by a random subset ("random", no spatial bias), or
padded to the batch maximum with a validity mask ("pad").

Every draw is a pure function of (seed, epoch, sample indices of the batch), so masks do not
depend on worker count or on where a run was resumed.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from tcjepa.config import ConfigError, MaskConfig
from tcjepa.data.batch import JEPABatch

_MAX_REDRAWS = 100  # position redraws per image before a config is declared infeasible
_MASK_STREAM = 3  # keeps mask seeds apart from the dataset (1) and sampler (2) streams

TextLookup = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def infeasible_mask_config(cfg: MaskConfig, grid: tuple[int, int], context_block: tuple[int, int],
                           target_block: tuple[int, int]) -> ConfigError:
    """The error of a mask config whose context keeps too few patches after every redraw."""
    return ConfigError(
        f"mask config keeps fewer than mask.min_keep={cfg.min_keep} context patches after "
        f"{_MAX_REDRAWS} draws on a {grid[0]}x{grid[1]} grid (context block {context_block[0]}x{context_block[1]}, "
        f"{cfg.num_targets} target blocks {target_block[0]}x{target_block[1]}); "
        "lower min_keep, num_targets or target_scale")


class MultiBlockMaskCollator:
    """Collate samples into the pretraining batch and draw its context / target masks.

    Returns a ``JEPABatch`` (``data/batch.py`` lists its fields and shapes); ``context_valid``
    is set in "pad" mode only, ``text`` / ``word_mask`` come from ``text_lookup(caption_ids)``
    when it is given (a feature cache, read here in the loader's workers).
    """

    def __init__(self, cfg: MaskConfig, grid: tuple[int, int], seed: int = 0,
                 text_lookup: TextLookup | None = None):
        h, w = grid
        if h < 1 or w < 1:
            raise ConfigError(f"patch grid must be positive, got {grid}")
        for name in ("context_scale", "target_scale"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"mask.{name}=({lo}, {hi}) must satisfy 0 < low <= high <= 1")
        for name in ("context_aspect", "target_aspect"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"mask.{name}=({lo}, {hi}) must satisfy 0 < low <= high")
        if cfg.num_targets < 1:
            raise ConfigError(f"mask.num_targets must be >= 1, got {cfg.num_targets}")
        if not 1 <= cfg.min_keep <= h * w:
            raise ConfigError(f"mask.min_keep={cfg.min_keep} must be in [1, {h * w}] for a {h}x{w} patch grid")
        if cfg.context_truncation not in ("random", "pad"):
            raise ConfigError(f"mask.context_truncation={cfg.context_truncation!r} is not 'random' or 'pad'")
        self.cfg = cfg
        self.grid = (h, w)
        self.seed = seed
        self.text_lookup = text_lookup

    # ------------------------------------------------------------------ sampling

    def block_size(self, scale: tuple[float, float], aspect: tuple[float, float],
                   rng: np.random.Generator) -> tuple[int, int]:
        """(rows, cols) of a block; scale and aspect (rows / cols) drawn independently."""
        h, w = self.grid
        s = rng.uniform(scale[0], scale[1])
        a = rng.uniform(aspect[0], aspect[1])
        area = s * h * w
        rows = min(h, max(1, int(round(np.sqrt(area * a)))))
        cols = min(w, max(1, int(round(np.sqrt(area / a)))))
        return rows, cols

    def _blocks(self, rng: np.random.Generator, n: int, rows: int, cols: int, count: int) -> np.ndarray:
        """(n, count, h, w) bool masks of blocks at uniform positions, last row/col included."""
        h, w = self.grid
        top = rng.integers(0, h - rows + 1, (n, count))
        left = rng.integers(0, w - cols + 1, (n, count))
        r, c = np.arange(h), np.arange(w)
        in_rows = (r >= top[..., None]) & (r < top[..., None] + rows)  # (n, count, h)
        in_cols = (c >= left[..., None]) & (c < left[..., None] + cols)  # (n, count, w)
        return in_rows[..., :, None] & in_cols[..., None, :]

    def sample(self, batch_size: int, key: Sequence[int] = ()) -> dict[str, Any]:
        """Masks for one batch; ``key`` identifies the batch (e.g. epoch and sample indices)."""
        cfg, (h, w) = self.cfg, self.grid
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _MASK_STREAM, *map(int, key)])))
        t_rows, t_cols = self.block_size(cfg.target_scale, cfg.target_aspect, rng)
        c_rows, c_cols = self.block_size(cfg.context_scale, cfg.context_aspect, rng)
        targets = np.zeros((batch_size, cfg.num_targets, h, w), dtype=bool)
        context = np.zeros((batch_size, h, w), dtype=bool)
        todo = np.arange(batch_size)
        for _ in range(_MAX_REDRAWS):
            t = self._blocks(rng, len(todo), t_rows, t_cols, cfg.num_targets)
            c = self._blocks(rng, len(todo), c_rows, c_cols, 1)[:, 0] & ~t.any(1)
            targets[todo], context[todo] = t, c
            todo = todo[c.reshape(len(todo), -1).sum(1) < cfg.min_keep]
            if len(todo) == 0:
                break
        else:
            raise infeasible_mask_config(cfg, (h, w), (c_rows, c_cols), (t_rows, t_cols))
        context = context.reshape(batch_size, h * w)
        counts = context.sum(1)
        block = (np.arange(t_rows)[:, None] * w + np.arange(t_cols)[None, :]).ravel()
        flat_targets = targets.reshape(batch_size, cfg.num_targets, h * w)
        corner = flat_targets.argmax(-1)  # first patch of each block in row-major order
        target_idx = corner[..., None] + block  # (B, M, t_rows * t_cols), sorted row-major
        if cfg.context_truncation == "random":
            keep = int(counts.min())
            # Random keys, non-context patches pushed past 1: the k smallest are a uniform
            # random subset of each image's context, whatever its position in the grid.
            keys = rng.random((batch_size, h * w)) + ~context
            context_idx = np.sort(np.argpartition(keys, keep - 1, axis=1)[:, :keep], axis=1)
            context_valid = None
        else:
            longest = int(counts.max())
            context_idx = np.argsort(~context, axis=1, kind="stable")[:, :longest]
            valid = np.arange(longest)[None, :] < counts[:, None]
            context_idx = np.where(valid, context_idx, 0)  # padding points at patch 0, masked out
            context_valid = torch.from_numpy(valid)
        return {"context_idx": torch.from_numpy(context_idx.astype(np.int64)),
                "context_valid": context_valid,
                "target_idx": torch.from_numpy(target_idx.astype(np.int64)),
                "context_counts": torch.from_numpy(counts.astype(np.int64))}

    # ------------------------------------------------------------------ collation

    def __call__(self, samples: list[dict[str, Any]]) -> JEPABatch:
        images = [s["image"] for s in samples]
        if not all(isinstance(x, torch.Tensor) for x in images):
            raise TypeError("samples must hold image tensors; give the dataset a transform (e.g. PretrainTransform)")
        sample_idx = torch.tensor([int(s["sample_idx"]) for s in samples], dtype=torch.int64)
        caption_ids = torch.tensor([list(s["caption_ids"]) for s in samples], dtype=torch.int64)
        epoch = int(samples[0].get("epoch", 0))
        masks = self.sample(len(samples), (epoch, *sample_idx.tolist()))
        batch = JEPABatch(images=torch.stack(images).float(), context_idx=masks["context_idx"],
                          target_idx=masks["target_idx"], context_valid=masks["context_valid"],
                          caption_ids=caption_ids, captions=[list(s["captions"]) for s in samples],
                          sample_idx=sample_idx)
        if self.text_lookup is not None:
            batch.text, batch.word_mask = self.text_lookup(caption_ids)
        return batch


# ----------------------------------------------------------------------------- statistics


def mask_statistics(collator: MultiBlockMaskCollator, num_batches: int = 50, batch_size: int = 64,
                    seed: int = 0) -> dict[str, Any]:
    """Coverage maps and size histograms over ``num_batches`` sampled batches."""
    h, w = collator.grid
    context_cover = np.zeros(h * w)
    target_cover = np.zeros(h * w)
    kept, before, target_sizes = [], [], []
    images = 0
    for b in range(num_batches):
        m = collator.sample(batch_size, (seed, b))
        idx = m["context_idx"].numpy()
        valid = np.ones_like(idx, dtype=bool) if m["context_valid"] is None else m["context_valid"].numpy()
        np.add.at(context_cover, idx[valid], 1)
        np.add.at(target_cover, m["target_idx"].numpy().ravel(), 1)
        kept += valid.sum(1).tolist()
        before += m["context_counts"].tolist()
        target_sizes.append(m["target_idx"].shape[-1])
        images += batch_size
    return {"grid": [h, w], "images": images,
            "context_coverage": (context_cover / images).reshape(h, w),
            "target_coverage": (target_cover / images).reshape(h, w),
            "context_kept": np.array(kept), "context_before_truncation": np.array(before),
            "target_block_size": np.array(target_sizes)}


def format_statistics(stats: dict[str, Any]) -> str:
    def grid_text(a: np.ndarray) -> str:
        return "\n".join("  " + " ".join(f"{v:4.2f}" for v in row) for row in a)

    def hist_text(values: np.ndarray, bins: int = 10) -> str:
        counts, edges = np.histogram(values, bins=min(bins, max(1, int(np.ptp(values)) + 1)))
        top = max(1, counts.max())
        return "\n".join(f"  {edges[i]:6.1f}-{edges[i + 1]:6.1f} {c:6d} {'#' * int(40 * c / top)}"
                         for i, c in enumerate(counts))

    h, w = stats["grid"]
    kept, before = stats["context_kept"], stats["context_before_truncation"]
    cov = stats["context_coverage"]
    return "\n".join([
        f"grid {h}x{w} = {h * w} patches, {stats['images']} images",
        f"context tokens kept per image: mean {kept.mean():.1f}, min {kept.min()}, max {kept.max()} "
        f"(before truncation: mean {before.mean():.1f}, min {before.min()}, max {before.max()})",
        f"context coverage: P(patch in context), spatial min/max ratio {cov.min() / max(cov.max(), 1e-12):.2f}",
        grid_text(cov),
        "target coverage: expected target blocks covering a patch",
        grid_text(stats["target_coverage"]),
        "context size histogram (tokens kept per image):", hist_text(kept),
        "target block size histogram (patches per block, one size per batch):",
        hist_text(stats["target_block_size"]),
    ])


def draw_masks(collator: MultiBlockMaskCollator, path: str, num_images: int = 8, seed: int = 0,
               stats: dict[str, Any] | None = None) -> None:
    """PNG: sampled masks (context blue, targets coloured, unused grey) and coverage maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    h, w = collator.grid
    m = collator.sample(num_images, (seed, 1 << 31))  # a key no statistics batch uses
    panels = num_images + (2 if stats is not None else 0)
    cols = min(panels, 5)
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(2.4 * cols, 2.6 * ((panels + cols - 1) // cols)),
                             squeeze=False)
    colours = ["#d0d0d0", "#3b6fd6", "#e4572e", "#f3a712", "#29bf12", "#a846a0", "#00a6a6", "#6b4226"]
    for i in range(num_images):
        canvas = np.zeros(h * w, dtype=int)
        idx = m["context_idx"][i]
        if m["context_valid"] is not None:
            idx = idx[m["context_valid"][i]]
        canvas[idx.numpy()] = 1
        for t, block in enumerate(m["target_idx"][i]):
            canvas[block.numpy()] = 2 + t % (len(colours) - 2)
        ax = axes.flat[i]
        ax.imshow(canvas.reshape(h, w), cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1)
        ax.set_title(f"context {len(idx)}", fontsize=8)
    if stats is not None:
        for j, name in enumerate(("context_coverage", "target_coverage")):
            ax = axes.flat[num_images + j]
            im = ax.imshow(stats[name], cmap="viridis")
            ax.set_title(name.replace("_", " "), fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
