"""The training loop, top to bottom: set-up, resume, steps, checkpoints, summary.

One path for TC-JEPA and I-JEPA (``text.enabled=false``). Data, model, optimizer,
parallelism and checkpoints each live in their own module; this file only wires them.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import yaml
from tqdm import tqdm

from ..config import Config
from ..data.loader import build_pretrain_loader
from ..models.jepa import JEPA
from . import checkpoint as ckpt_io
from .compile import compile_for_training, drop_compiled_regions
from .distributed import (
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    load_model_state_dict,
    load_optimizer_state_dict,
    model_state_dict,
    optimizer_state_dict,
    wrap_model,
)
from .monitors import MetricsLogger, grounding_collapse_warning, probe_monitors
from .optim import Schedules, build_optimizer, build_param_groups

log = logging.getLogger("tcjepa.train")
MODEL_PARTS = ("encoder", "predictor", "target_encoder")  # I-JEPA's checkpoint keys
# Above this share of its initialization left in the target encoder at the end, warn.
TARGET_INIT_SHARE_WARNING = 0.1


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says where it stopped."""


@dataclass
class TrainSummary:
    out_dir: str
    steps: int
    final_loss: float
    bad_samples: int
    last_checkpoint: Optional[str]
    seconds: float
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_text_source(cfg: Config, device: torch.device):
    """Returns (cache or None, online encoder or None).

    A feature cache is read inside loader workers; without one the frozen encoder runs in
    the main process on each batch's caption strings.
    """
    if not cfg.text.enabled:
        return None, None
    if cfg.data.text_cache:
        from ..text.cache import TextFeatureCache

        cache = TextFeatureCache(cfg.data.text_cache)
        cache.check_encoder(cfg.text.encoder, cfg.text.max_words, cfg.text.dim)
        return cache, None
    from ..text.encoder import FrozenTextEncoder

    encoder = FrozenTextEncoder(cfg.text.encoder, max_words=cfg.text.max_words, device=str(device))
    if encoder.dim != cfg.text.dim:
        raise TrainingError(f"text encoder {cfg.text.encoder!r} gives {encoder.dim}-d words but text.dim={cfg.text.dim}")
    return None, encoder


def to_device(batch: dict[str, Any], device: torch.device, text_encoder=None) -> dict[str, Any]:
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if text_encoder is not None and "text" not in out:
        captions = [c for per_image in batch["captions"] for c in per_image]
        feats, mask = text_encoder.encode(captions)
        B, N = len(batch["captions"]), len(batch["captions"][0])
        out["text"] = feats.reshape(B, N, *feats.shape[1:]).to(device)
        out["text_mask"] = mask.reshape(B, N, -1).to(device)
    if "text" in out and out["text"] is not None:
        out["text"] = out["text"].float()
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return dict(
        images=batch["images"],
        context_idx=batch["context_idx"],
        target_idx=batch["target_idx"],
        context_valid=batch.get("context_valid"),
        text=batch.get("text"),
        text_mask=batch.get("text_mask"),
    )


def batches(loader) -> Iterator[dict]:
    """Endless batch stream; the loader's sampler decides order, epochs and where a resumed
    epoch starts."""
    while True:
        yield from loader


# ----------------------------------------------------------------------------- the run


def train(cfg: Config, max_steps_this_run: Optional[int] = None, on_step: Optional[Callable] = None) -> TrainSummary:
    """Train until the configured number of steps. ``max_steps_this_run`` stops early (as a
    kill would, but cleanly; used by tests and the demo); ``on_step(step)`` is a test hook."""
    t0 = time.time()
    dist = init_distributed()
    device = resolve_device(cfg.train.device) if dist.world_size == 1 else dist.device
    out_dir = Path(cfg.train.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # Every rank builds the same initial weights: DDP would broadcast rank 0's, but FSDP2 keeps
    # each rank's own shard, which mixed two inits when ranks were seeded apart.
    torch.manual_seed(cfg.train.seed)

    # Model, then everything that depends on its patch grid.
    model = JEPA(cfg).to(device)
    if dist.world_size > 1:  # per-rank streams (drop_path); one process keeps its stream as before
        torch.manual_seed(cfg.train.seed + dist.rank)
    if cfg.train.activation_checkpointing:
        model.encoder.set_grad_checkpointing(True)
        model.target_encoder.set_grad_checkpointing(False)
    accum = cfg.optim.grad_accum
    micro_batch = cfg.optim.batch_size // (dist.world_size * accum)
    if micro_batch < 1:
        raise TrainingError(
            f"optim.batch_size={cfg.optim.batch_size} is smaller than world_size x grad_accum "
            f"({dist.world_size} x {accum})"
        )
    # The text source comes first: a cache is read inside the loader's workers.
    text_cache, text_encoder = build_text_source(cfg, device)
    loader, sampler, dataset = build_pretrain_loader(
        cfg, model.grid_size, rank=dist.rank, world_size=dist.world_size,
        text_lookup=functools.partial(text_cache.lookup, trim=True, round_to=8) if text_cache is not None else None,
        batch_size=micro_batch,
    )
    if text_cache is not None:
        text_cache.check_captions(dataset.caption_texts())
    steps_per_epoch = max(1, len(loader) // accum)
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
    # FSDP2 shards parameters in place, so the optimizer is built after wrapping.
    use_bf16 = cfg.train.precision == "bf16" and device.type == "cuda"
    wrapped = wrap_model(model, cfg.train.distributed, device, param_dtype=torch.bfloat16 if use_bf16 else None)
    optimizer = build_optimizer(build_param_groups(model.encoder, model.predictor), cfg.optim, device)

    # Resume: everything that decides the future of the run comes back from the checkpoint.
    step, history = 0, []
    resume_path = ckpt_io.resolve_resume(cfg.train.resume, out_dir)
    if resume_path is not None:
        state = ckpt_io.load_checkpoint(resume_path, allow_pickle=cfg.train.allow_pickle)
        missing = [k for k in (*MODEL_PARTS, "opt", "step", "sampler", "rng") if k not in state]
        if missing:
            raise ckpt_io.CheckpointError(
                f"{resume_path}: not a training checkpoint of this project (no {missing}); "
                "an exported or foreign file cannot be resumed"
            )
        _check_same_model(state, cfg, resume_path)
        try:
            load_model_state_dict(model, {
                f"{part}.{k}": v for part in MODEL_PARTS for k, v in state[part].items()
            })
            load_optimizer_state_dict(model, optimizer, state["opt"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ckpt_io.CheckpointError(f"{resume_path}: weights do not fit the requested model ({first})") from e
        step = int(state["step"])
        sampler.load_state_dict(state["sampler"])
        history = list(state.get("history", []))
        rng = state["rng"]
        ckpt_io.restore_rng_state(rng[dist.rank] if len(rng) == dist.world_size else rng[0])
        log.info("resumed from %s at step %d (epoch %d)", resume_path, step, sampler.epoch)

    compiled = compile_for_training(wrapped, cfg.train.compile_scope) if cfg.train.compile else None

    def forward(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # torch.compile fails on some stacks (no compiler, unsupported ops, a recompile for a new
        # caption length): fall back to eager once, with a warning, instead of losing the run.
        nonlocal compiled
        if compiled is None:
            return wrapped(**model_inputs(batch))
        try:
            return compiled(**model_inputs(batch))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("torch.compile failed at step %d (%s: %s); continuing in eager mode",
                        step, type(e).__name__, first[:300])
            compiled = None
            drop_compiled_regions(wrapped)
            return wrapped(**model_inputs(batch))

    logger = MetricsLogger(out_dir, enabled=dist.is_main, tensorboard=cfg.train.tensorboard, resume_step=step)
    probe = _probe_batch(loader, dataset, cfg, device, text_encoder)

    last_ckpt: Optional[str] = str(resume_path) if resume_path else None

    def save(step_now: int) -> None:
        nonlocal last_ckpt
        # Collectives under FSDP: every rank takes part, rank 0 writes.
        full = model_state_dict(model)
        opt_state = optimizer_state_dict(model, optimizer)
        rng = all_gather_objects(ckpt_io.capture_rng_state())
        if not dist.is_main:
            return
        state = {part: {k[len(part) + 1:]: v for k, v in full.items() if k.startswith(part + ".")}
                 for part in MODEL_PARTS}
        state.update(
            opt=opt_state, scaler=None, epoch=sampler.epoch, step=step_now, config=cfg.to_dict(), rng=rng,
            sampler=sampler.state_dict(),
            ema_momentum=schedules.ema(step_now), history=history,
        )
        try:
            path = ckpt_io.save_run_checkpoint(out_dir, step_now, state, keep=cfg.train.keep_checkpoints)
        except OSError as e:  # disk full, permissions, ...: the previous checkpoint is intact
            raise TrainingError(
                f"could not write checkpoint {out_dir / ckpt_io.checkpoint_name(step_now)} at step {step_now} "
                f"({e}); last good checkpoint: {last_ckpt or 'none yet'}"
            ) from e
        last_ckpt = str(path)

    stream = batches(loader)
    stop_at = total_steps if max_steps_this_run is None else min(total_steps, step + max_steps_this_run)
    bar = tqdm(total=total_steps, initial=step, disable=not dist.is_main, desc="train", dynamic_ncols=True)
    window_t, window_imgs = time.time(), 0
    warned_collapse = False
    # Read once, at the end: a per-step .item() would wait for the optimizer step and EMA update.
    last_loss: torch.Tensor | None = None
    model.train()
    try:
        while step < stop_at:
            schedules.apply(optimizer, step)
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = to_device(next(stream), device, text_encoder)
                sync = contextlib.nullcontext() if micro == accum - 1 or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = forward(batch)
                (out["loss"] / accum).backward()
                window_imgs += batch["images"].shape[0] * dist.world_size
                for k, v in out.items():
                    if v.numel() == 1:
                        sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
            if dist.world_size > 1:
                # One small collective: every rank gets the global mean losses, so a non-finite
                # loss on any rank (whose gradients DDP has already averaged into everyone's)
                # stops or skips the step on all of them, and the log shows the global loss.
                names = sorted(sums)
                means = all_reduce_mean(torch.stack([sums[k] for k in names]))
                sums = dict(zip(names, means))
            loss_t = sums["loss"]
            if not torch.isfinite(loss_t):
                optimizer.zero_grad(set_to_none=True)
                message = (
                    f"non-finite loss ({loss_t.item()}) at step {step + 1}; "
                    f"last good checkpoint: {last_ckpt or 'none yet'}"
                )
                if cfg.train.nan_policy == "stop":
                    raise TrainingError(message)  # the handler below closes the bar and the logs
                log.warning("%s: skipping this step (train.nan_policy=skip)", message)
                step += 1
                if step % cfg.train.ckpt_every == 0 or step == stop_at:
                    save(step)  # a skipped last step must still leave the run's final checkpoint
                bar.update(1)
                continue
            if cfg.optim.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], cfg.optim.clip_grad
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.update_target(schedules.ema(step))
            step += 1
            last_loss = loss_t
            if on_step is not None:
                on_step(step)

            if step % cfg.train.log_every == 0 or step == stop_at:
                elapsed = max(time.time() - window_t, 1e-9)
                row = {k: v.item() for k, v in sums.items()}
                row.update(
                    epoch=sampler.epoch, lr=schedules.lr(step - 1), wd=schedules.wd(step - 1),
                    ema=schedules.ema(step - 1), img_per_s=window_imgs / elapsed,
                )
                if "positive_cosine_fraction" in out:
                    # Every rank logs at the same steps, so the global mean is one more small collective.
                    fraction = all_reduce_mean(out["positive_cosine_fraction"].detach().float().clone())
                    row["positive_cosine_fraction"] = fraction.cpu().tolist()
                    collapse = None if warned_collapse else grounding_collapse_warning(
                        step, row["positive_cosine_fraction"], cfg.loss.sparse_weight, cfg.loss.consist_weight)
                    if collapse:
                        if dist.is_main:
                            log.warning(collapse)
                        warned_collapse = True
                history.append({"step": step, "loss": row["loss"]})
                logger.log(step, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
                window_t, window_imgs = time.time(), 0
            if probe is not None and (step % cfg.train.monitor_every == 0 or step == stop_at):
                logger.log(step, probe_monitors(model, probe))
            if step % cfg.train.ckpt_every == 0 or step == stop_at:
                save(step)
            bar.update(1)
    except BaseException:
        bar.close()  # end the progress line before the error is printed
        logger.close()
        raise
    bar.close()
    logger.close()
    bad = dataset.bad_samples
    loss_value = float("nan") if last_loss is None else last_loss.item()
    summary = TrainSummary(
        out_dir=str(out_dir), steps=step, final_loss=loss_value, bad_samples=bad,
        last_checkpoint=last_ckpt, seconds=time.time() - t0, history=history,
    )
    if dist.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
        print(
            f"done: {step} steps, final loss {loss_value:.4f}, bad samples skipped {bad}, "
            f"checkpoint {last_ckpt}",
            flush=True,
        )
    # Leave the process group together and on purpose: a group still alive at interpreter exit
    # can abort a rank of a finished run ("terminate called without an active exception").
    barrier()
    cleanup()
    return summary


def _check_same_model(state: dict, cfg: Config, path: Path) -> None:
    saved = state.get("config", {}).get("model", {})
    now = cfg.to_dict()["model"]
    diff = {k: (saved.get(k), now[k]) for k in now if k in saved and saved.get(k) != now[k]}
    if diff:
        raise TrainingError(f"{path}: checkpoint was trained with a different model config {diff} (saved, requested)")
    saved_text = state.get("config", {}).get("text", {}).get("enabled")
    if saved_text is not None and saved_text != cfg.text.enabled:
        raise TrainingError(f"{path}: checkpoint has text.enabled={saved_text}, config asks {cfg.text.enabled}")


def _probe_batch(loader, dataset, cfg: Config, device, text_encoder) -> dict:
    """A fixed batch (the first samples, epoch-0 crops and masks) for the monitors, built
    outside the training stream so it does not move the sampler."""
    n = min(len(dataset), 32)
    return to_device(loader.collate_fn([dataset[(i, 0)] for i in range(n)]), device, text_encoder)
