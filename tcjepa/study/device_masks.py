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
them, are those of the unpadded batch. The random streams differ (torch instead of numpy), the distribution does not:
``tests/study/test_device_masks.py`` compares both samplers on 10k masks.
"""
from __future__ import annotations

import math

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
        cfg, (h, w) = self.cfg, self.grid
        if static_shapes and cfg.context_truncation != "pad":
            raise ValueError(f"static mask shapes pad contexts: mask.context_truncation must be 'pad', "
                             f"not {cfg.context_truncation!r}")
        t_rows, t_cols = self.block_size(cfg.target_scale, cfg.target_aspect, g)
        c_rows, c_cols = self.block_size(cfg.context_scale, cfg.context_aspect, g)
        M = cfg.num_targets
        corners = torch.zeros(batch_size, M, dtype=torch.long, device=self.device)
        context = torch.zeros(batch_size, h, w, dtype=torch.bool, device=self.device)
        todo = torch.arange(batch_size, device=self.device)
        for _ in range(_MAX_REDRAWS):
            t, corner = self._blocks(g, len(todo), t_rows, t_cols, M)
            c = self._blocks(g, len(todo), c_rows, c_cols, 1)[0][:, 0] & ~t.any(1)
            corners[todo], context[todo] = corner, c
            short = c.reshape(len(todo), -1).sum(1) < cfg.min_keep
            if not bool(short.any()):  # the one host sync of a batch
                break
            todo = todo[short]
        else:
            raise infeasible_mask_config(cfg, (h, w), (c_rows, c_cols), (t_rows, t_cols))
        context = context.reshape(batch_size, h * w)
        counts = context.sum(1)
        block = (torch.arange(t_rows, device=self.device)[:, None] * w
                 + torch.arange(t_cols, device=self.device)[None, :]).reshape(-1)
        target_idx = corners[..., None] + block  # (B, M, t_rows * t_cols), row-major
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
