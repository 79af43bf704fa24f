from __future__ import annotations

import numpy as np
import pytest
import torch

from tcjepa.config import ConfigError, MaskConfig
from tcjepa.data.masks import MultiBlockMaskCollator, mask_statistics

GRID = (8, 8)


def _draws(cfg, batches=60, batch_size=16, grid=GRID):
    collator = MultiBlockMaskCollator(cfg, grid, seed=0)
    return [collator.sample(batch_size, (0, b)) for b in range(batches)]


@pytest.mark.parametrize("mode", ["random", "pad"])
def test_invariants(mode):
    cfg = MaskConfig(context_truncation=mode)
    h, w = GRID
    for m in _draws(cfg):
        ctx, tgt = m["context_idx"], m["target_idx"]
        assert ctx.dtype == tgt.dtype == torch.int64
        B, M, Kt = tgt.shape
        assert M == cfg.num_targets and ctx.shape[0] == B
        valid = torch.ones_like(ctx, dtype=torch.bool) if mode == "random" else m["context_valid"]
        assert (mode == "random") == (m["context_valid"] is None)
        assert valid.sum(1).min() >= cfg.min_keep
        for b in range(B):
            kept = set(ctx[b][valid[b]].tolist())
            targets = set(tgt[b].flatten().tolist())
            assert len(kept) == int(valid[b].sum()) and not kept & targets  # disjoint, no repeats
            assert 0 <= min(kept) and max(kept | targets) < h * w
            for block in tgt[b]:  # each target is a full rectangle
                rows, cols = block // w, block % w
                assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == Kt
        # one block size per batch; rounding each side moves the area by at most half a side
        lo, hi = cfg.target_scale
        side = np.sqrt(hi * h * w * cfg.target_aspect[1])
        assert lo * h * w - side - 0.25 <= Kt <= hi * h * w + side + 0.25


def test_scale_and_aspect_are_independent():
    collator = MultiBlockMaskCollator(MaskConfig(target_scale=(0.1, 0.5), target_aspect=(0.5, 2.0)), (16, 16))
    sizes = np.array([collator.block_size((0.1, 0.5), (0.5, 2.0), np.random.default_rng(i)) for i in range(2000)])
    area, aspect = sizes.prod(1), sizes[:, 0] / sizes[:, 1]
    assert abs(np.corrcoef(area, np.log(aspect))[0, 1]) < 0.1  # public I-JEPA: strongly correlated


def test_every_patch_reachable_and_full_blocks_possible():
    cfg = MaskConfig(context_scale=(0.85, 1.0), target_scale=(0.15, 0.2))
    collator = MultiBlockMaskCollator(cfg, GRID, seed=0)
    sizes = {collator.block_size(cfg.context_scale, cfg.context_aspect, np.random.default_rng(i)) for i in range(200)}
    assert GRID in sizes  # a context block may be the whole grid
    stats = mask_statistics(collator, num_batches=40, batch_size=32)
    assert (stats["context_coverage"] > 0).all() and (stats["target_coverage"] > 0).all()
    assert stats["target_coverage"][-1, -1] > 0 and stats["context_coverage"][-1, -1] > 0


def test_random_truncation_is_spatially_flat():
    # Which context patches survive the cut to the batch minimum must not depend on position:
    # P(kept | in context) is the same for every patch (public I-JEPA keeps the first k, i.e. the top).
    cfg = MaskConfig(num_targets=1, target_scale=(0.15, 0.2), context_scale=(1.0, 1.0), min_keep=4)
    collator = MultiBlockMaskCollator(cfg, GRID, seed=0)
    kept, present = np.zeros(64), np.zeros(64)
    for b in range(150):
        m = collator.sample(32, (1, b))
        np.add.at(kept, m["context_idx"].numpy().ravel(), 1)
        in_ctx = np.ones((32, 64), dtype=bool)
        np.put_along_axis(in_ctx, m["target_idx"].reshape(32, -1).numpy(), False, axis=1)
        present += in_ctx.sum(0)
    ratio = kept / present
    top, bottom = ratio[:32].mean(), ratio[32:].mean()
    assert abs(top - bottom) < 0.02 and ratio.std() / ratio.mean() < 0.06


def test_pad_mode_padding():
    m = _draws(MaskConfig(context_truncation="pad"), batches=3)[0]
    valid, ctx = m["context_valid"], m["context_idx"]
    assert valid.dtype == torch.bool and valid.shape == ctx.shape
    assert valid[:, 0].all() and (valid.sum(1) == m["context_counts"]).all()
    assert valid.sum(1).max() == ctx.shape[1] and (ctx[~valid] == 0).all()


def test_determinism_and_batch_identity():
    c = MultiBlockMaskCollator(MaskConfig(), GRID, seed=3)
    a, b, other = c.sample(8, (0, 1, 2)), c.sample(8, (0, 1, 2)), c.sample(8, (0, 1, 3))
    assert torch.equal(a["context_idx"], b["context_idx"]) and torch.equal(a["target_idx"], b["target_idx"])
    assert not torch.equal(a["target_idx"], other["target_idx"])


def test_infeasible_config_is_a_clear_error():
    cfg = MaskConfig(num_targets=4, target_scale=(0.9, 1.0), min_keep=10)
    with pytest.raises(ConfigError, match="min_keep"):
        MultiBlockMaskCollator(cfg, GRID).sample(4, (0,))
    with pytest.raises(ConfigError, match="min_keep=100"):
        MultiBlockMaskCollator(MaskConfig(min_keep=100), GRID)
