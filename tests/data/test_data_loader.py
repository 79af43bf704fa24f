from __future__ import annotations

import pytest
import torch

from tcjepa.config import ConfigError, load_config
from tcjepa.data.errors import DataError
from tcjepa.data.loader import ResumableSampler, build_pretrain_loader


def test_sampler_resume_is_exact():
    full = ResumableSampler(50, seed=1)
    expected = []
    for epoch in range(2):
        full.set_epoch(epoch)
        expected.append(list(full))
    assert sorted(k[0] for k in expected[0]) == list(range(50)) and expected[0] != expected[1]
    s = ResumableSampler(50, seed=1)
    it = iter(s)
    taken = [next(it) for _ in range(17)]
    s.advance(17)
    state = s.state_dict()
    resumed = ResumableSampler(50, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a trainer calling set_epoch for the current epoch keeps the position
    assert taken + list(resumed) == expected[0]
    resumed.finish_epoch()
    assert list(resumed) == expected[1]


def test_sampler_ranks_partition_and_world_size_change():
    ranks = [ResumableSampler(10, seed=0, rank=r, world_size=3) for r in range(3)]
    keys = [k for s in ranks for k in s]
    assert len(keys) == 12 and {k[0] for k in keys} == set(range(10))
    s = ResumableSampler(12, seed=0, rank=0, world_size=2)
    s.advance(3)
    single = ResumableSampler(12, seed=0)
    single.load_state_dict(s.state_dict())
    assert single.position == 6
    with pytest.raises(DataError, match="num_samples"):
        ResumableSampler(13, seed=0).load_state_dict(s.state_dict())


def _cfg(root, **over):
    overrides = [f"data.root={root}", "data.image_size=32", "model.patch_size=8", "data.num_workers=0",
                 "data.num_captions=5", "optim.batch_size=8", "train.seed=0", "mask.min_keep=4"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("mode", ["random", "pad"])
def test_batch_contract(scenes_root, mode):
    calls = []

    def text_lookup(ids):
        calls.append(ids.clone())
        return torch.zeros(*ids.shape, 6, 4, dtype=torch.float16), torch.ones(*ids.shape, 6, dtype=torch.bool)

    cfg = _cfg(scenes_root, **{"mask.context_truncation": mode, "optim.grad_accum": 2})
    loader, sampler, dataset = build_pretrain_loader(cfg, (4, 4), text_lookup=text_lookup)
    batch = next(iter(loader))
    B = 4  # 8 / (1 rank x 2 accumulation steps)
    assert batch.images.shape == (B, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.context_idx.dtype == torch.int64 and batch.context_idx.shape[0] == B
    assert batch.target_idx.shape[:2] == (B, cfg.mask.num_targets)
    assert (batch.context_valid is None) == (mode == "random")
    assert batch.caption_ids.shape == (B, 5) and batch.caption_ids.dtype == torch.int64
    assert len(batch.captions) == B and all(len(c) == 5 for c in batch.captions)
    texts = dataset.caption_texts()
    assert [[texts[i] for i in row] for row in batch.caption_ids.tolist()] == batch.captions
    assert batch.sample_idx.shape == (B,) and batch.text.shape == (B, 5, 6, 4)
    assert batch.word_mask.shape == (B, 5, 6) and torch.equal(calls[0], batch.caption_ids)
    assert sampler.position == B


def test_loader_resume_gives_identical_batches(scenes_root):
    cfg = _cfg(scenes_root)
    loader, sampler, _ = build_pretrain_loader(cfg, (4, 4), batch_size=4)
    run = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        run += list(loader)
    assert len(run) == 12
    loader, sampler, _ = build_pretrain_loader(cfg, (4, 4), batch_size=4)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = sampler.state_dict()
    assert state["epoch"] == 0 and state["position"] == 16
    loader, sampler, _ = build_pretrain_loader(cfg, (4, 4), batch_size=4, sampler_state=state)
    resumed = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        resumed += list(loader)
    assert len(resumed) == 8
    for a, b in zip(run[4:], resumed):
        for key in ("images", "context_idx", "target_idx", "caption_ids", "sample_idx"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_loader_config_errors(scenes_root):
    with pytest.raises(ConfigError, match="does not match"):
        build_pretrain_loader(_cfg(scenes_root), (8, 8))
    with pytest.raises(ConfigError, match="not divisible"):
        build_pretrain_loader(_cfg(scenes_root, **{"optim.batch_size": 6}), (4, 4), world_size=4)
    with pytest.raises(DataError, match="fewer than one batch"):
        build_pretrain_loader(_cfg(scenes_root, **{"optim.batch_size": 64}), (4, 4))


def test_workers_match_main_process_and_count_bad_samples(scenes_root, tmp_path):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(scenes_root / "images", root / "images")
    shutil.copy(scenes_root / "captions.jsonl", root / "captions.jsonl")
    (root / "images/train/0000003.jpg").unlink()
    batches = {}
    for workers in (0, 2):
        cfg = _cfg(root, **{"data.num_workers": workers, "data.skip_bad_samples": "true"})
        loader, sampler, dataset = build_pretrain_loader(cfg, (4, 4), batch_size=6)
        batches[workers] = list(loader)
        assert dataset.bad_samples == 1  # seen from the main process, counted in a worker
        assert all(3 not in b.sample_idx.tolist() for b in batches[workers])
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a.images, b.images) and torch.equal(a.context_idx, b.context_idx)
