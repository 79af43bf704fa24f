"""The device mask sampler draws from the CPU collator's distribution (10k masks each).

Every batch shares one block size, so statistics are compared through their per-batch
values (157 batches of 64). Tolerances: for every patch, the probability that it is in the
context and the expected number of target blocks covering it, and the mean keep ratio
(context patches kept / patches), agree within 4.5 standard errors of the difference (two
samplers from one distribution exceed that with probability ~1e-5 per statistic; observed
maxima over four device seeds: 2.6, 2.9, 0.7) and within 0.05 (context coverage), 0.1
(target coverage, a count of blocks per patch, whose per-batch spread is larger) and 0.02
(keep ratio) absolute; the block-size distributions (10k draws each) within a total-variation
distance of 0.03. A sampler with other target scales fails the same check.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tcjepa.config import ConfigError, MaskConfig
from tcjepa.data.masks import MultiBlockMaskCollator
from tcjepa.study.device_masks import DeviceMaskSampler

GRID = (8, 8)
BATCH, BATCHES = 64, 157  # 10048 masks
DEMO_MASKS = MaskConfig(context_scale=(0.85, 1.0), target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                        num_targets=4, min_keep=4, context_truncation="pad")


def _collect(sample_batch) -> dict[str, np.ndarray]:
    """Per-batch statistics: context / target coverage maps (BATCHES, h*w), keep ratio (BATCHES,)."""
    h, w = GRID
    context, target, keep = [], [], []
    for b in range(BATCHES):
        m = sample_batch(b)
        idx = m["context_idx"].cpu().numpy()
        valid = np.ones_like(idx, bool) if m["context_valid"] is None else m["context_valid"].cpu().numpy()
        context.append(np.bincount(idx[valid], minlength=h * w) / BATCH)
        target.append(np.bincount(m["target_idx"].cpu().numpy().ravel(), minlength=h * w) / BATCH)
        keep.append(valid.sum(1).mean() / (h * w))
    return {"context": np.array(context), "target": np.array(target), "keep": np.array(keep)}


ABSOLUTE = {"context": 0.05, "target": 0.1, "keep": 0.02}


def _agree(a: np.ndarray, b: np.ndarray, name: str) -> bool:
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    gap = np.abs(a.mean(0) - b.mean(0))
    return bool(np.all(gap <= 4.5 * se + 1e-12) and np.all(gap < ABSOLUTE[name]))


def _samplers(cpu_cfg: MaskConfig, device_cfg: MaskConfig) -> tuple[dict, dict]:
    collator = MultiBlockMaskCollator(cpu_cfg, GRID, seed=0)
    sampler = DeviceMaskSampler(device_cfg, GRID)
    g = sampler.generator(1)
    return _collect(lambda b: collator.sample(BATCH, (0, b))), _collect(lambda b: sampler.sample(BATCH, g))


@pytest.mark.parametrize("truncation", ["pad", "random"])
def test_coverage_and_keep_ratio_match_the_collator(truncation):
    cfg = MaskConfig(**{**DEMO_MASKS.__dict__, "context_truncation": truncation})
    cpu, dev = _samplers(cfg, cfg)
    for name in ("context", "target", "keep"):
        assert _agree(cpu[name], dev[name], name), name


def test_the_comparison_sees_another_distribution():
    other = MaskConfig(**{**DEMO_MASKS.__dict__, "target_scale": (0.25, 0.3)})
    cpu, dev = _samplers(DEMO_MASKS, other)
    assert not _agree(cpu["keep"], dev["keep"], "keep")
    assert not _agree(cpu["target"], dev["target"], "target")


def _size_distribution(draw, n: int = 10000) -> Counter:
    return Counter(draw() for _ in range(n))


@pytest.mark.parametrize("which", ["target", "context"])
def test_block_sizes_match_the_collator(which):
    cfg = DEMO_MASKS
    scale, aspect = ((cfg.target_scale, cfg.target_aspect) if which == "target"
                     else (cfg.context_scale, cfg.context_aspect))
    collator = MultiBlockMaskCollator(cfg, GRID)
    rng = np.random.default_rng(0)
    sampler = DeviceMaskSampler(cfg, GRID)
    g = sampler.generator(0)
    cpu = _size_distribution(lambda: collator.block_size(scale, aspect, rng))
    dev = _size_distribution(lambda: sampler.block_size(scale, aspect, g))
    total_variation = 0.5 * sum(abs(cpu[k] - dev[k]) for k in set(cpu) | set(dev)) / 10000
    assert total_variation < 0.03
    assert len(cpu) > 1 or which == "context"  # the target sizes really vary


def test_masks_are_well_formed():
    sampler = DeviceMaskSampler(DEMO_MASKS, GRID)
    m = sampler.sample(BATCH, sampler.generator(3))
    B, M, Kt = m["target_idx"].shape
    assert (B, M) == (BATCH, 4)
    valid = m["context_valid"]
    for i in range(B):
        ctx = set(m["context_idx"][i][valid[i]].tolist())
        assert len(ctx) == int(m["context_counts"][i]) >= DEMO_MASKS.min_keep
        assert not ctx & set(m["target_idx"][i].reshape(-1).tolist())  # the context never sees a target
    assert int(m["target_idx"].max()) < 64


def test_same_seed_same_masks_and_bad_config_is_refused():
    sampler = DeviceMaskSampler(DEMO_MASKS, GRID)
    a, b = sampler.sample(8, sampler.generator(5)), sampler.sample(8, sampler.generator(5))
    assert torch.equal(a["context_idx"], b["context_idx"]) and torch.equal(a["target_idx"], b["target_idx"])
    with pytest.raises(ConfigError, match="min_keep"):
        DeviceMaskSampler(MaskConfig(min_keep=0), GRID)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_several_runs_sampled_together_get_their_own_masks(static_shapes):
    """sample_runs checks every run's redraws with one sync per round; the masks are those each
    run draws alone (min_keep 16 makes some batches redraw)."""
    cfg = MaskConfig(**{**DEMO_MASKS.__dict__, "min_keep": 16})
    sampler = DeviceMaskSampler(cfg, GRID)
    together = sampler.sample_runs(BATCH, [sampler.generator(k) for k in range(12)], static_shapes)
    for k, masks in enumerate(together):
        alone = sampler.sample(BATCH, sampler.generator(k), static_shapes)
        for name, value in alone.items():
            assert (value is None and masks[name] is None) or torch.equal(value, masks[name]), (k, name)
    if static_shapes:
        assert len({(m["context_idx"].shape, m["target_idx"].shape) for m in together}) == 1
    infeasible = MaskConfig(**{**DEMO_MASKS.__dict__, "min_keep": 60})
    sampler = DeviceMaskSampler(infeasible, GRID)
    with pytest.raises(ConfigError, match="min_keep=60"):
        sampler.sample_runs(BATCH, [sampler.generator(0), sampler.generator(1)])
