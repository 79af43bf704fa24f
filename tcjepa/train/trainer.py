"""The ``Trainer``: everything a run is made of, and its one ``train_step``.

``build_trainer(cfg)`` builds the parts in the order a run needs them (model, text source,
loader, schedules, wrapping, optimizer, checkpointer); ``Trainer.train_step`` takes one
optimizer step. The training loop (``loop.py``), the step benchmark
(``benchmarks/train_step.py``) and the tests all call this same method.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import nn

from ..config import Config
from ..data.batch import JEPABatch
from ..models.jepa import JEPA
from .checkpoint import Checkpointer
from .checkpoint_parts import Keyed, ModelWeights, OptimizerState, RNGStates
from .compile import compile_for_training, drop_compiled_regions
from .distributed import DistInfo, all_reduce_mean, init_distributed, wrap_model
from .optim import Schedules, build_optimizer, build_param_groups

if TYPE_CHECKING:
    from ..text.source import TextSource

log = logging.getLogger("tcjepa.train")
# Above this share of its initialization left in the target encoder at the end, warn.
TARGET_INIT_SHARE_WARNING = 0.1


@dataclass
class StepResult:
    """What one step leaves behind: the loss terms (means over micro-batches and ranks, still
    on the device), the last micro-batch's model output, the images it saw on this rank, and
    whether the loss was finite (a non-finite step changes no weight)."""

    metrics: dict[str, torch.Tensor]
    output: dict[str, torch.Tensor]
    images: int
    finite: bool = True


@dataclass
class Trainer:
    cfg: Config
    model: JEPA
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    device: torch.device
    wrapped: nn.Module  # what the step calls: the model, or its DDP / FSDP2 wrapper
    text: Optional["TextSource"] = None  # where word features come from (None: I-JEPA, or already in the batch)
    world_size: int = 1
    step: int = 0
    history: list[dict] = field(default_factory=list)
    loader: Any = None
    sampler: Any = None
    dataset: Any = None
    checkpointer: Optional[Checkpointer] = None
    compile_error: Optional[str] = None
    # train.precision=bf16 autocasts on GPUs only (CPU bf16 kernels are slow); the numerics
    # check (benchmarks/numerics.py) turns it on for CPUs to compare bf16 with fp32 there.
    bf16_on_cpu: bool = False

    def __post_init__(self) -> None:
        self.use_bf16 = self.cfg.train.precision == "bf16" and (
            self.device.type == "cuda" or (self.bf16_on_cpu and self.device.type == "cpu"))
        self.compiled = self.cfg.train.compile
        self.forward_module = (compile_for_training(self.wrapped, self.cfg.train.compile_scope)
                               if self.compiled else self.wrapped)

    def prepare(self, batch: JEPABatch) -> JEPABatch:
        """A loader batch on the training device, with its word features."""
        batch = batch.to(self.device)
        return self.text.attach(batch, self.device) if self.text is not None else batch

    def train_step(self, batches: Sequence[JEPABatch], check_finite: bool = True) -> StepResult:
        """One optimizer step over ``batches``, the step's micro-batches as the loader gives them.

        ``check_finite`` is the step's one host sync: a non-finite loss then skips the update
        (gradients dropped, the step still counted); the caller decides whether to stop."""
        self.schedules.apply(self.optimizer, self.step)
        metrics: dict[str, Any] = {}
        images = 0
        for i, host_batch in enumerate(batches):
            batch = self.prepare(host_batch)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.wrapped, "no_sync") else self.wrapped.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                out = self._forward(batch)
            (out["loss"] / len(batches)).backward()
            images += len(batch)
            for k, v in out.items():
                if v.numel() == 1:
                    metrics[k] = metrics.get(k, 0.0) + v.detach().float() / len(batches)
        if self.world_size > 1:
            # One small collective: every rank gets the global mean losses, so a non-finite loss
            # on any rank (whose gradients DDP has already averaged into everyone's) skips the
            # step on all of them, and the log shows the global loss.
            names = sorted(metrics)
            metrics = dict(zip(names, all_reduce_mean(torch.stack([metrics[k] for k in names]))))
        if check_finite and not torch.isfinite(metrics["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            return StepResult(metrics, out, images, finite=False)
        if self.cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.optim.clip_grad
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_target(self.schedules.ema(self.step))
        self.step += 1
        return StepResult(metrics, out, images)

    def _forward(self, batch: JEPABatch) -> dict[str, torch.Tensor]:
        # torch.compile fails on some stacks (no compiler, unsupported ops, a recompile for a new
        # caption length): fall back to eager once, with a warning, instead of losing the run.
        try:
            return self.forward_module(batch)
        except Exception as e:
            if not self.compiled:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.compile_error = f"{type(e).__name__}: {first[:300]}"
            log.warning("torch.compile failed at step %d (%s); continuing in eager mode", self.step, self.compile_error)
            drop_compiled_regions(self.wrapped)  # regional compilation compiled the blocks in place
            self.forward_module, self.compiled = self.wrapped, False
            return self.wrapped(batch)

    # The trainer's own checkpoint keys: where the run stands.
    keys = ("step",)

    def state_dict(self) -> dict[str, Any]:
        epoch = self.sampler.epoch if self.sampler is not None else 0
        return {"step": self.step, "epoch": epoch, "ema_momentum": self.schedules.ema(self.step),
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = list(state.get("history", []))


# ----------------------------------------------------------------------------- building


def build_model(cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> JEPA:
    # Every rank builds the same initial weights: DDP would broadcast rank 0's, but FSDP2 keeps
    # each rank's own shard, which mixed two inits when ranks were seeded apart.
    torch.manual_seed(cfg.train.seed)
    model = JEPA(cfg).to(device)
    if world_size > 1:  # per-rank streams (drop_path); one process keeps its stream as before
        torch.manual_seed(cfg.train.seed + rank)
    if cfg.train.activation_checkpointing:
        model.encoder.set_grad_checkpointing(True)
        model.target_encoder.set_grad_checkpointing(False)
    return model


def wrap_and_optimize(model: JEPA, cfg: Config, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The parallel wrapper (``train.distributed``) and AdamW. FSDP2 shards parameters in place,
    so the optimizer is built after wrapping."""
    use_bf16 = cfg.train.precision == "bf16" and device.type == "cuda"
    wrapped = wrap_model(model, cfg.train.distributed, device, param_dtype=torch.bfloat16 if use_bf16 else None)
    return wrapped, build_optimizer(build_param_groups(model.encoder, model.predictor), cfg.optim, device)


def build_trainer(cfg: Config, dist: Optional[DistInfo] = None) -> Trainer:
    """Every part of a run, in the order they depend on each other; nothing is resumed yet."""
    from ..data.loader import build_pretrain_loader, per_process_batch_size
    from ..text.source import build_text_source

    dist = dist or init_distributed(cfg.train.device)
    device = dist.device
    model = build_model(cfg, device, dist.rank, dist.world_size)
    micro_batch = per_process_batch_size(cfg, dist.world_size)
    # The text source comes first: a cache is read inside the loader's workers.
    text = build_text_source(cfg, device)
    loader, sampler, dataset = build_pretrain_loader(
        cfg, model.grid_size, rank=dist.rank, world_size=dist.world_size,
        text_lookup=text.lookup if text is not None else None, batch_size=micro_batch,
    )
    if text is not None:
        text.check_dataset(dataset)
    steps_per_epoch = max(1, len(loader) // cfg.optim.grad_accum)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    schedules = Schedules(cfg.optim, steps_per_epoch, total_steps)
    init_share = schedules.target_init_share()
    if init_share > TARGET_INIT_SHARE_WARNING:
        log.warning(
            "optim.ema=%s over %d steps leaves %.0f%% of the target encoder (the encoder that is "
            "evaluated and exported) at its random initialization; for short runs start the EMA "
            "lower, e.g. optim.ema=[0.98,1.0]",
            list(cfg.optim.ema), total_steps, 100 * init_share,
        )
    wrapped, optimizer = wrap_and_optimize(model, cfg, device)
    trainer = Trainer(cfg, model, optimizer, schedules, device, wrapped, text=text,
                      world_size=dist.world_size, loader=loader, sampler=sampler, dataset=dataset)
    trainer.checkpointer = Checkpointer(
        Path(cfg.train.out_dir),
        [ModelWeights(model), OptimizerState(model, optimizer), trainer, Keyed("sampler", sampler),
         RNGStates(dist.rank, dist.world_size)],
        config=cfg.to_dict(), keep=cfg.train.keep_checkpoints, allow_pickle=cfg.train.allow_pickle,
        is_main=dist.is_main,
    )
    return trainer
