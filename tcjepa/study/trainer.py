"""One study run: the JEPA model, its optimizer and schedules, fed by device scenes and masks.

The step is the training loop's own ``Trainer.train_step`` (``tcjepa.train.trainer``) on a
``JEPABatch``: schedules applied, the model's forward and loss, a finite check, AdamW, EMA
update of the target encoder. What differs is only where a batch comes from: the scenes of step t are
rendered from (data seed, run seed, t) and its masks drawn from a generator seeded by
(run seed, t), both on the device, so a run resumed from any checkpoint continues exactly
and needs no sampler or RNG state.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from tcjepa.data.batch import JEPABatch
from tcjepa.errors import TrainingError
from tcjepa.study.device_masks import DeviceMaskSampler, MaskGenerator
from tcjepa.study.device_scenes import SceneBatch, training_batch
from tcjepa.study.text_bank import TextBank
from tcjepa.study.variants import StudySettings, Variant, run_config, warmup_steps
from tcjepa.train import checkpoint as ckpt_io
from tcjepa.train.checkpoint_parts import MODEL_PARTS
from tcjepa.train.optim import Schedules
from tcjepa.train.trainer import Trainer, build_model, wrap_and_optimize

_MASK_STREAM = 0x6D61736B  # keeps mask seeds apart from any other seed of the run


def shuffle_captions(caption_ids: torch.Tensor) -> torch.Tensor:
    """Each image gets the captions of the next image of its batch (a derangement for B >= 2)."""
    return torch.roll(caption_ids, shifts=-1, dims=0)


class StudyRun:
    def __init__(self, variant: Variant, settings: StudySettings, seed: int, out_dir: str | Path,
                 text_bank: Optional[TextBank], device: torch.device | str = "cpu", static_shapes: bool = False):
        if variant.objective != "jepa":
            raise TrainingError(f"variant {variant.name} is not a JEPA run (objective {variant.objective})")
        if variant.text and text_bank is None:
            raise TrainingError(f"variant {variant.name} reads captions: give it the text bank")
        self.variant, self.settings, self.seed = variant, settings, seed
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.cfg = run_config(variant, settings, seed, self.out_dir)
        self.model = build_model(self.cfg, self.device)
        self.text_bank = text_bank if variant.text else None
        self.masks = DeviceMaskSampler(self.cfg.mask, self.model.grid_size, self.device)
        # Training batches padded to one shape at every step, so that runs can be stacked
        # (tcjepa.study.stacked): the same training to float rounding (tests/study/test_stacked_runs.py).
        self.static_shapes = static_shapes
        wrapped, self.optimizer = wrap_and_optimize(self.model, self.cfg, self.device)
        # The schedules' one "epoch" is the warm-up (optim.warmup_epochs=1): a share of the budget.
        schedules = Schedules(self.cfg.optim, warmup_steps(settings), settings.budget)
        self.trainer = Trainer(self.cfg, self.model, self.optimizer, schedules, self.device, wrapped)

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def evaluated_encoder(self) -> torch.nn.Module:
        return self.model.target_encoder  # the protocol evaluates the EMA target

    # ------------------------------------------------------------------ data

    def scenes(self, step: int) -> SceneBatch:
        s = self.settings
        return training_batch(s.data_seed, self.seed, step, s.batch_size, s.image_size, s.num_captions, self.device,
                              s.object_radii)

    def mask_generator(self, mask_key: int) -> MaskGenerator:
        """The generator of the masks of ``mask_key`` (a step): seeded by (run seed, ``mask_key``)."""
        return self.masks.generator((self.seed * 1_000_003 + mask_key) * 31 + _MASK_STREAM)

    def batch(self, scenes: SceneBatch, mask_key: int, shuffled: Optional[bool] = None,
              static_shapes: bool = False, masks: Optional[dict] = None) -> JEPABatch:
        """The training batch of ``scenes``; masks seeded by (run seed, ``mask_key``), unless
        ``masks`` holds them already (drawn for several runs at once: ``StackedRuns``)."""
        if masks is None:
            masks = self.masks.sample(len(scenes), self.mask_generator(mask_key), static_shapes)
        batch = JEPABatch(images=scenes.normalized_images(), context_idx=masks["context_idx"],
                          target_idx=masks["target_idx"], context_valid=masks["context_valid"],
                          target_valid=masks["target_valid"], caption_ids=scenes.caption_ids)
        if self.text_bank is not None:
            ids = scenes.caption_ids
            if self.variant.shuffled_captions if shuffled is None else shuffled:
                ids = shuffle_captions(ids)
            batch = batch.with_text(*self.text_bank.lookup(ids))
        return batch

    # ------------------------------------------------------------------ training

    def train_step(self, batch: JEPABatch) -> dict[str, torch.Tensor]:
        result = self.trainer.train_step([batch])
        if not result.finite:
            raise TrainingError(f"{self.out_dir}: non-finite loss at step {self.step}; last checkpoint "
                                f"{ckpt_io.find_resume_checkpoint(self.out_dir)}")
        out = result.metrics
        boost = self.variant.boost_second_moment
        if boost is not None and self.step == boost[0]:
            self.boost_encoder_second_moment(boost[1])
        return out

    def training_batch(self, step: int) -> JEPABatch:
        """Step ``step``'s batch: its scenes, its masks and, for text variants, its captions."""
        return self.batch(self.scenes(step), step, static_shapes=self.static_shapes)

    def advance(self, until: int) -> Optional[dict[str, torch.Tensor]]:
        """Train to step ``until`` (``train_prefetching``: each next batch made in a second thread)."""
        self.model.train()
        return train_prefetching(self, self.training_batch, until)

    @torch.no_grad()
    def boost_encoder_second_moment(self, factor: float) -> None:
        for p in self.model.encoder.parameters():
            state = self.optimizer.state.get(p)
            if state and "exp_avg_sq" in state:
                state["exp_avg_sq"].mul_(factor)

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        state = {part: getattr(self.model, part).state_dict() for part in MODEL_PARTS}
        state.update(opt=self.optimizer.state_dict(), step=self.step, config=self.cfg.to_dict(),
                     variant=self.variant.name, seed=self.seed)
        return ckpt_io.save_run_checkpoint(self.out_dir, self.step, state, keep=1)

    def resume(self) -> int:
        """Continue from the run folder's latest intact checkpoint, if any; returns the step."""
        path = ckpt_io.find_resume_checkpoint(self.out_dir)
        if path is None:
            return 0
        state = ckpt_io.load_checkpoint(path)
        check_resumable(state, path, self.variant.name, self.seed, self.settings.budget)
        for part in MODEL_PARTS:
            getattr(self.model, part).load_state_dict(state[part])
        self.optimizer.load_state_dict(state["opt"])
        self.trainer.step = int(state["step"])
        return self.step


def check_resumable(state: dict, path: Path, variant: str, seed: int, budget: int) -> None:
    """Refuse a checkpoint of another run, or of this run at another budget."""
    if state.get("variant") != variant or state.get("seed") != seed:
        raise ckpt_io.CheckpointError(f"{path}: a checkpoint of {state.get('variant')} seed {state.get('seed')}, "
                                      f"not {variant} seed {seed}; use another run folder")
    if state["config"]["optim"]["max_steps"] != budget:
        raise ckpt_io.CheckpointError(f"{path}: trained for a budget of {state['config']['optim']['max_steps']} "
                                      f"steps, not {budget}; schedules would differ")


def train_prefetching(trainer, make_batch: Callable[[int], Any], until: int) -> Optional[dict[str, torch.Tensor]]:
    """``trainer.train_step(make_batch(step))`` until ``trainer.step`` reaches ``until``; returns
    the last step's output. The next step's batch is made in a second thread while this step
    computes (the loop's DataLoader worker does the same for the demo): with one intra-op
    thread each, the two use two cores, and the mask sampler's host syncs (a redraw check, the
    context length) wait in that thread, not in the one launching the step's work. Batches are
    a pure function of the step, so the result does not depend on the overlap."""
    out = None
    if trainer.step >= until:
        return out
    with ThreadPoolExecutor(1) as pool:
        upcoming = pool.submit(make_batch, trainer.step)
        while trainer.step < until:
            batch = upcoming.result()
            if trainer.step + 1 < until:
                upcoming = pool.submit(make_batch, trainer.step + 1)
            out = trainer.train_step(batch)
    return out


def steps_per_second(run, steps: int = 5) -> float:
    """Wall-clock training speed over ``steps`` steps after one warm-up step (a benchmark aid);
    ``run``: a ``StudyRun`` or anything with its ``step`` and ``advance`` (``StackedRuns``)."""
    import time

    run.advance(run.step + 1)
    t0 = time.perf_counter()
    run.advance(run.step + steps)
    return steps / max(time.perf_counter() - t0, 1e-9)
