"""The training loop, top to bottom: build, resume, steps, logs, checkpoints, summary.

One path for TC-JEPA and I-JEPA (``text.enabled=false``). ``build_trainer`` (``trainer.py``)
makes the parts and owns the step; the ``Checkpointer`` (``checkpoint.py``) owns the files;
this module only decides when to step, log, probe and save.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import yaml
from tqdm import tqdm

from ..config import Config
from ..errors import TrainingError
from .distributed import all_reduce_mean, barrier, cleanup, init_distributed
from .monitors import MetricsLogger, grounding_collapse_warning, probe_monitors
from .trainer import StepResult, Trainer, build_trainer

log = logging.getLogger("tcjepa.train")

__all__ = ["TrainSummary", "TrainingError", "train"]


@dataclass
class TrainSummary:
    out_dir: str
    steps: int
    final_loss: float
    bad_samples: int
    last_checkpoint: Optional[str]
    seconds: float
    history: list[dict] = field(default_factory=list)


def batches(loader) -> Iterator[dict]:
    """Endless batch stream; the loader's sampler decides order, epochs and where a resumed
    epoch starts."""
    while True:
        yield from loader


def train(cfg: Config, max_steps_this_run: Optional[int] = None, on_step: Optional[Callable] = None) -> TrainSummary:
    """Train until the configured number of steps. ``max_steps_this_run`` stops early (as a
    kill would, but cleanly; used by tests and the demo); ``on_step(step)`` is a test hook."""
    t0 = time.time()
    dist = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = build_trainer(cfg, dist)
    # Resume: everything that decides the future of the run comes back from the checkpoint.
    resumed = trainer.checkpointer.resume(cfg.train.resume)
    if resumed is not None:
        log.info("resumed from %s at step %d (epoch %d)", resumed, trainer.step, trainer.sampler.epoch)
    logger = MetricsLogger(out_dir, enabled=dist.is_main, tensorboard=cfg.train.tensorboard, resume_step=trainer.step)
    probe = _probe_batch(trainer)
    total_steps = trainer.schedules.total_steps
    stop_at = total_steps if max_steps_this_run is None else min(total_steps, trainer.step + max_steps_this_run)
    bar = tqdm(total=total_steps, initial=trainer.step, disable=not dist.is_main, desc="train", dynamic_ncols=True)
    try:
        last_loss = _run(trainer, stop_at, logger, probe, bar, on_step, dist.is_main)
    finally:
        bar.close()  # end the progress line before an error is printed
        logger.close()
    bad = trainer.dataset.bad_samples
    # Read once, at the end: a per-step .item() would wait for the optimizer step and EMA update.
    loss_value = float("nan") if last_loss is None else last_loss.item()
    last_ckpt = trainer.checkpointer.last
    summary = TrainSummary(
        out_dir=str(out_dir), steps=trainer.step, final_loss=loss_value, bad_samples=bad,
        last_checkpoint=str(last_ckpt) if last_ckpt else None, seconds=time.time() - t0, history=trainer.history,
    )
    if dist.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
        print(
            f"done: {trainer.step} steps, final loss {loss_value:.4f}, bad samples skipped {bad}, "
            f"checkpoint {summary.last_checkpoint}",
            flush=True,
        )
    # Leave the process group together and on purpose: a group still alive at interpreter exit
    # can abort a rank of a finished run ("terminate called without an active exception").
    barrier()
    cleanup()
    return summary


def _run(trainer: Trainer, stop_at: int, logger: MetricsLogger, probe, bar, on_step, is_main: bool):
    """Steps until ``stop_at``; returns the last finite loss (a device tensor) or None."""
    cfg = trainer.cfg
    stream = batches(trainer.loader)
    window = {"t": time.time(), "images": 0, "warned_collapse": False}
    last_loss: torch.Tensor | None = None
    trainer.model.train()
    while trainer.step < stop_at:
        result = trainer.train_step([next(stream) for _ in range(cfg.optim.grad_accum)])
        window["images"] += result.images * trainer.world_size
        step = trainer.step
        if not result.finite:
            last = trainer.checkpointer.last
            message = (f"non-finite loss ({result.metrics['loss'].item()}) at step {step}; "
                       f"last good checkpoint: {last or 'none yet'}")
            if cfg.train.nan_policy == "stop":
                raise TrainingError(message)
            log.warning("%s: skipping this step (train.nan_policy=skip)", message)
        else:
            last_loss = result.metrics["loss"]
            if on_step is not None:
                on_step(step)
            if step % cfg.train.log_every == 0 or step == stop_at:
                _log_step(trainer, result, logger, bar, window, is_main)
            if probe is not None and (step % cfg.train.monitor_every == 0 or step == stop_at):
                logger.log(step, probe_monitors(trainer.model, probe))
        # A skipped last step must still leave the run's final checkpoint.
        if step % cfg.train.ckpt_every == 0 or step == stop_at:
            trainer.checkpointer.save(step)
        bar.update(1)
    return last_loss


def _log_step(trainer: Trainer, result: StepResult, logger: MetricsLogger, bar, window: dict, is_main: bool) -> None:
    cfg, step, schedules = trainer.cfg, trainer.step, trainer.schedules
    elapsed = max(time.time() - window["t"], 1e-9)
    row = {k: v.item() for k, v in result.metrics.items()}
    row.update(
        epoch=trainer.sampler.epoch, lr=schedules.lr(step - 1), wd=schedules.wd(step - 1),
        ema=schedules.ema(step - 1), img_per_s=window["images"] / elapsed,
    )
    if "positive_cosine_fraction" in result.output:
        # Every rank logs at the same steps, so the global mean is one more small collective.
        fraction = all_reduce_mean(result.output["positive_cosine_fraction"].detach().float().clone())
        row["positive_cosine_fraction"] = fraction.cpu().tolist()
        collapse = None if window["warned_collapse"] else grounding_collapse_warning(
            step, row["positive_cosine_fraction"], cfg.loss.sparse_weight, cfg.loss.consist_weight)
        if collapse:
            if is_main:
                log.warning(collapse)
            window["warned_collapse"] = True
    trainer.history.append({"step": step, "loss": row["loss"]})
    logger.log(step, row)
    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
    window["t"], window["images"] = time.time(), 0


def _probe_batch(trainer: Trainer):
    """A fixed batch (the first samples, epoch-0 crops and masks) for the monitors, built
    outside the training stream so it does not move the sampler."""
    dataset = trainer.dataset
    n = min(len(dataset), 32)
    return trainer.prepare(trainer.loader.collate_fn([dataset[(i, 0)] for i in range(n)]))
