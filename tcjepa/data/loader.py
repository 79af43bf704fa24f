"""The pretraining data loader: dataset + resumable sampler + mask collator.

``ResumableSampler`` yields ``(index, epoch)`` keys, so every worker-side random choice is
a function of (seed, epoch, index) and the epoch never has to be pushed into (persistent)
workers. Its state counts the samples the *trainer* consumed, not the ones the DataLoader
prefetched: the loader returned by ``build_pretrain_loader`` advances it as each batch is
handed out, so ``sampler.state_dict()`` taken at a checkpoint resumes on the next batch.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from tcjepa.config import Config, ConfigError
from tcjepa.data.captions import CaptionedDataset, CaptionedImageFolder
from tcjepa.data.errors import DataError
from tcjepa.data.masks import MultiBlockMaskCollator, TextLookup
from tcjepa.data.transforms import PretrainTransform
from tcjepa.data.wds import CaptionedWebDataset

log = logging.getLogger("tcjepa.data")
_SAMPLER_STREAM = 2


class ResumableSampler(Sampler):
    """Per-epoch permutation, split across ranks, that continues exactly from a saved state.

    Rank ``r`` of ``world_size`` takes every ``world_size``-th index of the permutation (padded
    by wrapping, as DistributedSampler does). ``position`` = samples of this epoch already
    consumed on this rank. ``set_epoch`` with the current epoch keeps the position (so a
    resumed run may call it as usual); iterating an exhausted epoch starts the next one.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise DataError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def advance(self, n: int) -> None:
        """Record that ``n`` more samples of this epoch were consumed (the loader calls this)."""
        self.position = min(len(self), self.position + n)

    def finish_epoch(self) -> None:
        self.position = len(self)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's full index order for ``epoch``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, _SAMPLER_STREAM, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = len(self) * self.world_size
        if total > self.num_samples:
            order = np.concatenate([order, order[: total - self.num_samples]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        for index in self.epoch_indices(epoch)[self.position:]:
            yield int(index), epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "num_samples": self.num_samples, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_samples", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(f"sampler state has {key}={state[key]!r} but this run has {getattr(self, key)!r}; "
                                f"resume with the same data and seed, or start a new run")
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        old_world = int(state.get("world_size", self.world_size))
        if old_world != self.world_size:
            # Ranks consume in lockstep, so the global prefix consumed is position * world_size.
            consumed = position * old_world
            position = consumed // self.world_size
            if consumed % self.world_size:
                log.warning("resuming on %d ranks from %d: continuation is exact only to within one sample",
                            self.world_size, old_world)
        self.position = min(position, len(self))


class ResumableDataLoader(DataLoader):
    """A DataLoader that tells its ResumableSampler how many samples the consumer has taken."""

    def __iter__(self):
        sampler = self.sampler
        try:
            for batch in super().__iter__():
                sampler.advance(len(batch))
                yield batch
        except DataError as e:
            # A worker's DataError comes back as "Caught DataError in DataLoader worker ...
            # Original Traceback ...": keep the one line that names the file.
            text = str(e).strip()
            if text.startswith("Caught DataError") and "Traceback" in text:
                last = text.splitlines()[-1]
                raise DataError(last.split(": ", 1)[1] if ": " in last else last) from None
            raise
        sampler.finish_epoch()  # with drop_last the remainder is never yielded: the epoch is done


def per_process_batch_size(cfg: Config, world_size: int) -> int:
    """Images per micro-batch on one process: the global batch over ranks and accumulation
    steps, which must divide it (the one rule; every rank steps on the same share)."""
    share = world_size * cfg.optim.grad_accum
    if cfg.optim.batch_size % share:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by world_size x "
                          f"optim.grad_accum = {world_size} x {cfg.optim.grad_accum}")
    return cfg.optim.batch_size // share


def build_pretrain_dataset(cfg: Config) -> CaptionedDataset:
    data = cfg.data
    transform = PretrainTransform(data.image_size, data.crop_scale)
    kwargs = dict(transform=transform, num_captions=data.num_captions, seed=cfg.train.seed,
                  skip_bad_samples=data.skip_bad_samples)
    if data.format == "folder":
        return CaptionedImageFolder(data.root, data.captions_file, **kwargs)
    if data.format == "wds":
        return CaptionedWebDataset(data.shards, progress=True, **kwargs)
    raise ConfigError(f"data.format={data.format!r} is not 'folder' or 'wds'")


def build_pretrain_loader(cfg: Config, grid: tuple[int, int], *, rank: int = 0, world_size: int = 1,
                          text_lookup: TextLookup | None = None, batch_size: int | None = None,
                          sampler_state: dict[str, Any] | None = None
                          ) -> tuple[DataLoader, ResumableSampler, CaptionedDataset]:
    """(loader, sampler, dataset); batches follow the contract of ``MultiBlockMaskCollator``."""
    expected = (cfg.data.image_size // cfg.model.patch_size,) * 2
    if tuple(grid) != expected:
        raise ConfigError(f"patch grid {tuple(grid)} does not match data.image_size / model.patch_size = "
                          f"{cfg.data.image_size} / {cfg.model.patch_size} -> {expected}")
    batch_size = per_process_batch_size(cfg, world_size) if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"batch size per process must be >= 1, got {batch_size}")
    dataset = build_pretrain_dataset(cfg)
    sampler = ResumableSampler(len(dataset), seed=cfg.train.seed, shuffle=True, rank=rank, world_size=world_size)
    if sampler_state is not None:
        sampler.load_state_dict(sampler_state)
    if len(sampler) < batch_size:
        raise DataError(f"{cfg.data.root if cfg.data.format == 'folder' else cfg.data.shards}: {len(dataset)} "
                        f"samples give {len(sampler)} per rank, fewer than one batch of {batch_size} "
                        f"(batches are full: drop_last); use more data or a smaller optim.batch_size")
    collator = MultiBlockMaskCollator(cfg.mask, grid, seed=cfg.train.seed, text_lookup=text_lookup)
    workers = cfg.data.num_workers
    # Every new iterator draws a worker base seed; from the global torch RNG that draw would shift
    # the training stream (drop_path) after a resume, so it comes from the loader's own generator.
    generator = torch.Generator().manual_seed(cfg.train.seed + rank)
    loader = ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator,
                                 num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=True,
                                 persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,
                                 generator=generator)
    return loader, sampler, dataset
