"""I-JEPA multi-block masks sampled in batches on the device, distributed as the CPU collator's.

``tcjepa.data.masks.MultiBlockMaskCollator`` draws a batch's masks with numpy in the loader
workers. The study's batches are rendered on the device, so their masks are drawn there
too, by the same rules: one target block size and one context block size per batch (scale
and aspect drawn independently, the same rounding), M target blocks and one context block
per image at uniform positions with inclusive upper bounds, the context loses every target
patch, images keeping fewer than ``min_keep`` context patches are redrawn, and contexts are
padded to the batch maximum ("pad") or cut to the batch minimum by a random subset
("random"). With ``static_shapes`` every batch has the same shapes whatever its block sizes:
contexts padded to the whole grid and target blocks to the largest block the config allows,
with validity masks (``context_valid``, ``target_valid``), so that runs can be stacked into one
vmapped step (``tcjepa.study.stacked``); the masks themselves, and the random draws that make
them, are those of the unpadded batch. ``sample_runs`` draws several runs' batches with one
host sync per redraw round (the check for short contexts) instead of one per run. The random
streams differ from the collator's (torch instead of numpy), the distribution does not:
``tests/study/test_device_masks.py`` compares both samplers on 10k masks.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from tcjepa.config import MaskConfig
from tcjepa.data.masks import _MAX_REDRAWS, MultiBlockMaskCollator, infeasible_mask_config


class MaskGenerator:
    """A host generator for the block sizes, which decide tensor shapes and so are needed on the
    host (drawing them on a GPU would cost a device sync each), and a device one for the rest."""

    def __init__(self, seed: int, device: torch.device):
        self.host = torch.Generator().manual_seed(seed % (1 << 63))
        self.device = torch.Generator(device=device).manual_seed((seed * 2 + 1) % (1 << 63))


class DeviceMaskSampler:
    """``sample(batch_size, generator)`` -> the collator's mask dict, as tensors on ``device``."""

    def __init__(self, cfg: MaskConfig, grid: tuple[int, int], device: torch.device | str = "cpu"):
        MultiBlockMaskCollator(cfg, grid)  # the same config checks, the same one-line errors
        self.cfg = cfg
        self.grid = tuple(grid)
        self.device = torch.device(device)

    def largest_block(self, scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int]:
        """Upper bounds on (rows, cols) of any block ``block_size`` can draw (rounding included)."""
        h, w = self.grid
        area = max(scale) * h * w
        rows = min(h, max(1, int(round(math.sqrt(area * max(aspect))))))
        cols = min(w, max(1, int(round(math.sqrt(area / min(aspect))))))
        return rows, cols

    def generator(self, seed: int) -> "MaskGenerator":
        return MaskGenerator(seed, self.device)

    @staticmethod
    def _uniform(g: "MaskGenerator", lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g.host))

    def block_size(self, scale: tuple[float, float], aspect: tuple[float, float],
                   g: "MaskGenerator") -> tuple[int, int]:
        h, w = self.grid
        s = self._uniform(g, *scale)
        a = self._uniform(g, *aspect)
        area = s * h * w
        rows = min(h, max(1, int(round(math.sqrt(area * a)))))
        cols = min(w, max(1, int(round(math.sqrt(area / a)))))
        return rows, cols

    def _blocks(self, g: "MaskGenerator", n: int, rows: int, cols: int, count: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, count, h, w) bool blocks and (n, count) row-major index of each block's corner."""
        h, w = self.grid
        top = torch.randint(0, h - rows + 1, (n, count), generator=g.device, device=self.device)
        left = torch.randint(0, w - cols + 1, (n, count), generator=g.device, device=self.device)
        r = torch.arange(h, device=self.device)
        c = torch.arange(w, device=self.device)
        in_rows = (r >= top[..., None]) & (r < top[..., None] + rows)
        in_cols = (c >= left[..., None]) & (c < left[..., None] + cols)
        return in_rows[..., :, None] & in_cols[..., None, :], top * w + left

    def sample(self, batch_size: int, g: "MaskGenerator", static_shapes: bool = False
               ) -> dict[str, torch.Tensor | None]:
        return self.sample_runs(batch_size, [g], static_shapes)[0]

    def sample_runs(self, batch_size: int, generators: Sequence["MaskGenerator"], static_shapes: bool = False
                    ) -> list[dict[str, torch.Tensor | None]]:
        """``sample`` for several runs (one generator each), the same masks as one by one; each
        redraw round checks every run's batch with one host sync instead of one per run."""
        cfg = self.cfg
        if static_shapes and cfg.context_truncation != "pad":
            raise ValueError(f"static mask shapes pad contexts: mask.context_truncation must be 'pad', "
                             f"not {cfg.context_truncation!r}")
        draws = [_Draw(self, batch_size, g) for g in generators]
        pending = draws
        for _ in range(_MAX_REDRAWS):
            shorts = [d.redraw() for d in pending]
            any_short = torch.stack([s.any() for s in shorts]).tolist()  # the round's one host sync
            for d, short, again in zip(pending, shorts, any_short):
                d.todo = d.todo[short] if again else None
            pending = [d for d in pending if d.todo is not None]
            if not pending:
                break
        else:
            d = pending[0]
            raise infeasible_mask_config(cfg, self.grid, d.context_size, d.target_size)
        return [self._finish(d, static_shapes) for d in draws]

    def _finish(self, d: "_Draw", static_shapes: bool) -> dict[str, torch.Tensor | None]:
        cfg, (h, w) = self.cfg, self.grid
        batch_size, (t_rows, t_cols), g = len(d.context), d.target_size, d.g
        context = d.context.reshape(batch_size, h * w)
        counts = context.sum(1)
        block = (torch.arange(t_rows, device=self.device)[:, None] * w
                 + torch.arange(t_cols, device=self.device)[None, :]).reshape(-1)
        target_idx = d.corners[..., None] + block  # (B, M, t_rows * t_cols), row-major
        target_valid = None
        if static_shapes:
            rows, cols = self.largest_block(cfg.target_scale, cfg.target_aspect)
            pad = rows * cols - block.numel()
            target_idx = torch.cat([target_idx, target_idx[..., :1].expand(-1, -1, pad)], dim=2)
            target_valid = torch.arange(rows * cols, device=self.device).expand_as(target_idx) < block.numel()
        if cfg.context_truncation == "random":
            keep = int(counts.min())
            keys = torch.rand(batch_size, h * w, generator=g.device, device=self.device) + (~context).float()
            context_idx = torch.sort(torch.topk(keys, keep, dim=1, largest=False).indices, dim=1).values
            context_valid = None
        else:
            longest = h * w if static_shapes else int(counts.max())
            order = torch.sort((~context).to(torch.uint8), dim=1, stable=True).indices[:, :longest]
            valid = torch.arange(longest, device=self.device)[None, :] < counts[:, None]
            context_idx = torch.where(valid, order, torch.zeros_like(order))
            context_valid = valid
        return {"context_idx": context_idx, "context_valid": context_valid,
                "target_idx": target_idx, "target_valid": target_valid, "context_counts": counts}


class _Draw:
    """One batch's masks while they are drawn: its block sizes, then rounds of block positions
    for the images still keeping fewer than ``min_keep`` context patches (``todo``)."""

    def __init__(self, sampler: DeviceMaskSampler, batch_size: int, g: MaskGenerator):
        cfg, (h, w), device = sampler.cfg, sampler.grid, sampler.device
        self.sampler, self.g = sampler, g
        self.target_size = sampler.block_size(cfg.target_scale, cfg.target_aspect, g)
        self.context_size = sampler.block_size(cfg.context_scale, cfg.context_aspect, g)
        self.corners = torch.zeros(batch_size, cfg.num_targets, dtype=torch.long, device=device)
        self.context = torch.zeros(batch_size, h, w, dtype=torch.bool, device=device)
        self.todo: Optional[torch.Tensor] = torch.arange(batch_size, device=device)

    def redraw(self) -> torch.Tensor:
        """New blocks for the ``todo`` images; returns which of them are still short."""
        sampler, todo, n = self.sampler, self.todo, len(self.todo)
        t, corner = sampler._blocks(self.g, n, *self.target_size, sampler.cfg.num_targets)
        c = sampler._blocks(self.g, n, *self.context_size, 1)[0][:, 0] & ~t.any(1)
        self.corners[todo], self.context[todo] = corner, c
        return c.reshape(n, -1).sum(1) < sampler.cfg.min_keep
