"""Full training-step benchmark: ``Trainer.train_step``, the training loop's own step, timed after warm-up.

One step = the step of the training loop on a batch made by the real mask collator
(``MultiBlockMaskCollator``: synthetic images + multi-block masks) with random cached word
features (B, N, S, d_t) float16 + word masks: host->device copy, bf16 autocast, context
encoder + EMA target encoder + predictor with text cross-attention + loss + regularizers,
backward, AdamW (fused / foreach, ``tcjepa.train.optim``), lr / wd schedules, foreach EMA.
The collator runs in loader workers during training, so batches are collated before timing
(a pool of ``--pool`` batches with different masks, cycled) and the collator's own cost is
reported next to the step (``collate_ms``).

Variants, measured in the same process so that ratios compare like with like:
  ijepa          text off (plain I-JEPA; the batch carries no text)
  tc_n1_xattn    TC-JEPA, N=1 caption,  captions pooled after the cross-attention
  tc_n8_xattn    TC-JEPA, N=8 captions, pooled after the cross-attention (paper default)
  tc_n1_block    TC-JEPA, N=1, caption_pool_point=block
  tc_n8_block    TC-JEPA, N=8, every caption runs the whole predictor block (literal reading)

FLOPs per step are counted exactly (``torch.utils.flop_counter``: matmuls, convolutions and
attention of forward + backward) on a meta-device copy of the model with the batch's real
shapes, so counting costs no device memory; MFU = achieved FLOP/s / dense bf16 peak.

  python -m benchmarks.train_step --device cuda --models vit_base,vit_large,vit_huge --out results/bench/
  python -m benchmarks.train_step --device cuda --models vit_huge --batch-size fill   # fill the GPU
  python -m benchmarks.train_step --device cpu --tiny                                  # CI smoke test
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from tcjepa.config import Config, load_config
from tcjepa.data.batch import JEPABatch
from tcjepa.data.masks import MultiBlockMaskCollator
from tcjepa.models import vit as vit_module
from tcjepa.models.jepa import JEPA
from tcjepa.models.vit import count_parameters
from tcjepa.train.distributed import init_distributed
from tcjepa.train.optim import Schedules
from tcjepa.train.trainer import Trainer, build_model, wrap_and_optimize

from .common import format_table, metadata, peak_tflops, write_results
from .profiling import profile_steps, write_profile

log = logging.getLogger("benchmarks.train_step")

# Paper scale: 224 px, predictor width 384 (depth 6 for B, 12 for L/H), S=64 words of a
# 768-d text encoder (T5-base, as configs/pretrain). Batch = docs/SPEC.md section 9's reference runs.
FULL_MODELS: dict[str, dict[str, Any]] = {
    "vit_base": dict(patch_size=16, image_size=224, predictor_depth=6, predictor_width=384, batch=128),
    "vit_large": dict(patch_size=16, image_size=224, predictor_depth=12, predictor_width=384, batch=128),
    "vit_huge": dict(patch_size=14, image_size=224, predictor_depth=12, predictor_width=384, batch=64),
}
# CPU smoke scale: 64 px, patch 8 (8x8 grid), narrow predictors.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "vit_pico": dict(patch_size=8, image_size=64, predictor_depth=2, predictor_width=32, predictor_heads=2,
                     batch=8, min_keep=4),
    "vit_micro": dict(patch_size=8, image_size=64, predictor_depth=3, predictor_width=96, predictor_heads=4,
                      batch=16, min_keep=4),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "ijepa": dict(text=False, captions=0, pool_point="-"),
    "tc_n1_xattn": dict(text=True, captions=1, pool_point="xattn"),
    "tc_n8_xattn": dict(text=True, captions=8, pool_point="xattn"),
    "tc_n1_block": dict(text=True, captions=1, pool_point="block"),
    "tc_n8_block": dict(text=True, captions=8, pool_point="block"),
}


def variant_config(model: str, spec: dict[str, Any], variant: str, *, batch: int, words: int, text_dim: int,
                   precision: str, act_ckpt: bool, extra: tuple[str, ...] = ()) -> Config:
    v = VARIANTS[variant]
    o = [
        f"model.encoder={model}", f"model.patch_size={spec['patch_size']}", f"data.image_size={spec['image_size']}",
        f"model.predictor_depth={spec['predictor_depth']}", f"model.predictor_width={spec['predictor_width']}",
        f"text.max_words={words}", f"text.dim={text_dim}", f"optim.batch_size={batch}",
        f"train.precision={precision}", f"train.activation_checkpointing={str(act_ckpt).lower()}",
        f"text.enabled={str(v['text']).lower()}", f"data.num_captions={max(1, v['captions'])}",
    ]
    if "predictor_heads" in spec:
        o.append(f"model.predictor_heads={spec['predictor_heads']}")
    if "min_keep" in spec:
        o.append(f"mask.min_keep={spec['min_keep']}")
    if v["text"]:
        o.append(f"model.caption_pool_point={v['pool_point']}")
    return load_config(None, o + list(extra))


# ----------------------------------------------------------------------------- batches


def synthetic_samples(cfg: Config, batch: int, first_index: int, gen: torch.Generator) -> list[dict[str, Any]]:
    """What ``CaptionedDataset`` yields after its transform: normalised image tensors + captions."""
    s, n = cfg.data.image_size, cfg.data.num_captions
    return [{"image": torch.randn(3, s, s, generator=gen), "sample_idx": first_index + i, "epoch": 0,
             "caption_ids": [(first_index + i) * n + j for j in range(n)],
             "captions": ["synthetic caption"] * n} for i in range(batch)]


def random_word_features(cfg: Config, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, S, d_t) float16 features (as the text cache stores them) and (B, N, S) word masks
    with caption lengths uniform in [S/4, S]."""
    n, S, d = cfg.data.num_captions, cfg.text.max_words, cfg.text.dim
    feats = torch.randn(batch, n, S, d, generator=gen).to(torch.float16)
    lengths = torch.randint(max(1, S // 4), S + 1, (batch, n, 1), generator=gen)
    return feats, torch.arange(S) < lengths


def make_pool(cfg: Config, grid: tuple[int, int], batch: int, pool: int, seed: int, pin: bool
              ) -> tuple[list[JEPABatch], dict[str, float]]:
    """``pool`` batches through the real collator (each with its own masks) + word features;
    returns them and the collator's cost per batch (ms): full collate and masks alone."""
    collator = MultiBlockMaskCollator(cfg.mask, grid, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    batches, collate_s, mask_s = [], [], []
    for k in range(pool):
        samples = synthetic_samples(cfg, batch, k * batch, gen)
        t0 = time.perf_counter()
        b = collator(samples)
        collate_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        collator.sample(batch, (1, k))
        mask_s.append(time.perf_counter() - t0)
        if cfg.text.enabled:
            b.text, b.word_mask = random_word_features(cfg, batch, gen)
        b.captions = None  # strings stay on the host; with a text cache the step never reads them
        if pin:
            b = b.pin_memory()
        batches.append(b)
    stats = {"collate_ms": 1e3 * statistics.median(collate_s), "mask_ms": 1e3 * statistics.median(mask_s),
             "context_tokens": statistics.mean(b.context_idx.shape[1] for b in batches),
             "target_tokens": batches[0].target_idx.shape[1] * statistics.mean(b.target_idx.shape[2] for b in batches)}
    return batches, stats


# ----------------------------------------------------------------------------- FLOPs


def count_flops(cfg: Config, batches: list[JEPABatch], act_ckpt: bool) -> float:
    """Mean FLOPs of forward + backward per step over the pool, counted on a meta-device model
    (no memory, no kernels run). Activation checkpointing adds the recomputed forward."""
    vit_module.sincos_2d.cache_clear()  # the cache must not hand meta tensors to real models
    try:
        with torch.device("meta"):
            model = JEPA(cfg)
        model.train()
        if act_ckpt:
            model.encoder.set_grad_checkpointing(True)
        total = 0.0
        for b in batches:
            with FlopCounterMode(display=False) as counter:
                model(b.to("meta"))["loss"].backward()
            total += counter.get_total_flops()
        return total / len(batches)
    finally:
        vit_module.sincos_2d.cache_clear()


# ----------------------------------------------------------------------------- the step


@dataclass
class Harness:
    """A ``Trainer`` without data: the benchmark feeds it pre-collated batches."""

    trainer: Trainer
    loop_syncs: bool = False

    @property
    def model(self) -> JEPA:
        return self.trainer.model

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def step(self, batch: JEPABatch) -> torch.Tensor:
        """``Trainer.train_step``, the training loop's step, on one batch. Without ``loop_syncs``
        it skips its one host sync (the finite-loss check); with it, the pair measures its cost."""
        return self.trainer.train_step([batch], check_finite=self.loop_syncs).metrics["loss"]


def build_harness(cfg: Config, device: torch.device, compile_model: bool, seed: int, fsdp: bool = False,
                  loop_syncs: bool = False, bf16_on_cpu: bool = False, compile_scope: str = "blocks") -> Harness:
    """The loop's model, wrapping, optimizer and step (``train.seed``, ``train.compile`` and
    ``train.distributed`` set from the arguments), on a long schedule. ``bf16_on_cpu``: autocast
    on CPUs too (the numerics check), where the loop autocasts on GPUs only."""
    cfg = copy.deepcopy(cfg)
    cfg.train.seed, cfg.train.compile, cfg.train.distributed = seed, compile_model, "fsdp" if fsdp else "none"
    cfg.train.compile_scope = compile_scope
    if fsdp:  # torchrun's process group, or one of one: FSDP2's hooks and collectives all run
        init_distributed(str(device), group_of_one=True)
    model = build_model(cfg, device)
    model.train()
    wrapped, optimizer = wrap_and_optimize(model, cfg, device)
    schedules = Schedules(cfg.optim, steps_per_epoch=1000, total_steps=100_000)
    return Harness(Trainer(cfg, model, optimizer, schedules, device, wrapped, bf16_on_cpu=bf16_on_cpu), loop_syncs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_host_syncs(h: Harness, batch: JEPABatch) -> Optional[int]:
    """Host<->device synchronisations in one step (CUDA only), via torch's sync debug mode."""
    if h.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            h.step(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def time_steps(h: Harness, pool: list[JEPABatch], warmup: int, steps: int) -> dict[str, Any]:
    """Warm-up (compilation, allocator, optimizer state), then ``steps`` timed steps."""
    dev = h.device
    t_warm = time.perf_counter()
    for i in range(warmup):  # a torch.compile failure falls back to eager inside the step
        h.step(pool[i % len(pool)])
    sync(dev)
    warmup_s = time.perf_counter() - t_warm
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        static = torch.cuda.memory_allocated(dev)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    per_step: list[float] = []
    t0 = time.perf_counter()
    last = t0
    if dev.type == "cuda":
        events[0].record()
    for i in range(steps):
        loss = h.step(pool[(warmup + i) % len(pool)])
        if dev.type == "cuda":
            events[i + 1].record()
        else:
            now = time.perf_counter()
            per_step.append(now - last)
            last = now
    sync(dev)
    total = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": total, "warmup_s": warmup_s, "loss": float(loss),
                           "compile_error": h.trainer.compile_error}
    if dev.type == "cuda":
        per_step = [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        out["reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
        out["static_mem_gib"] = static / 2**30
    else:
        out["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS
    out["step_ms"] = 1e3 * statistics.median(per_step)
    out["step_ms_max"] = 1e3 * max(per_step)
    return out


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_variant(model_name: str, spec: dict[str, Any], variant: str, batch: int, args, device: torch.device,
                count_syncs: bool = True) -> dict[str, Any]:
    cfg = variant_config(model_name, spec, variant, batch=batch, words=args.words, text_dim=args.text_dim,
                         precision=args.precision, act_ckpt=args.activation_checkpointing,
                         extra=(f"model.text_attention_impl={args.attention_impl}",))
    v = VARIANTS[variant]
    row: dict[str, Any] = {"model": model_name, "variant": variant, "captions": v["captions"] or None,
                           "pool_point": v["pool_point"], "batch": batch, "words": args.words if v["text"] else None,
                           "precision": cfg.train.precision, "compile": args.compile,
                           "act_ckpt": args.activation_checkpointing, "fsdp": args.fsdp,
                           "loop_syncs": args.loop_syncs, "attention_impl": args.attention_impl,
                           "compile_scope": args.compile_scope if args.compile else None, "status": "ok"}
    h = pool = None
    if args.flops_only:  # no device work: FLOPs of the real shapes on the meta device
        grid = (cfg.data.image_size // cfg.model.patch_size,) * 2
        pool, pstats = make_pool(cfg, grid, batch, args.pool, args.seed, pin=False)
        row.update(pstats, status="flops only", gflop_per_img=count_flops(cfg, pool, args.activation_checkpointing) / batch / 1e9)
        return row
    try:
        h = build_harness(cfg, device, args.compile, args.seed, fsdp=args.fsdp, loop_syncs=args.loop_syncs,
                          compile_scope=args.compile_scope)
        row["params_m"] = count_parameters(h.model.encoder) / 1e6
        row["trainable_m"] = sum(p.numel() for g in h.trainer.optimizer.param_groups for p in g["params"]) / 1e6
        pool, pstats = make_pool(cfg, h.model.grid_size, batch, args.pool, args.seed, pin=device.type == "cuda")
        row.update(pstats)
        timing = time_steps(h, pool, args.warmup, args.steps)
        row.update({k: v for k, v in timing.items() if k != "seconds"})
        row["compile"] = args.compile and timing["compile_error"] is None
        row["img_per_s"] = batch * args.steps / timing["seconds"]
        if row["compile"]:  # warm-up beyond its steps' own time: compiling (and recompiling)
            row["compile_s"] = max(0.0, timing["warmup_s"] - args.warmup * row["step_ms"] / 1e3)
        if count_syncs:
            row["host_syncs"] = count_host_syncs(h, pool[0])
        if not math.isfinite(row["loss"]):
            row["status"] = "non-finite loss"
        if args.profile:
            row["profile"], row["profile_top"] = profile_steps(lambda i: h.step(pool[i % len(pool)]), args.profile, device)
        known = args.known_flops.get((model_name, variant, batch, args.activation_checkpointing))
        if known is not None:
            row["gflop_per_img"], row["flops_source"] = known, "--flops-from"
        elif not args.no_flops:
            row["gflop_per_img"] = count_flops(cfg, pool, args.activation_checkpointing) / batch / 1e9
        if row.get("gflop_per_img"):
            row["tflops"] = row["gflop_per_img"] * row["img_per_s"] / 1e3
            peak = peak_tflops(device, args.peak_tflops)
            row["mfu"] = row["tflops"] / peak if peak else None
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    finally:
        h = pool = None
        release()
    return row


def fill_batch(model_name: str, spec: dict[str, Any], variant: str, args, device: torch.device) -> dict[str, Any]:
    """Largest batch (multiple of 8) that fits in ``--fill-fraction`` of device memory: peak
    memory is linear in the batch, so two short probes give the slope and the intercept."""
    if device.type != "cuda":
        return run_variant(model_name, spec, variant, spec["batch"], args, device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    probe = argparse.Namespace(**{**vars(args), "steps": 2, "warmup": 2, "no_flops": True, "pool": 2, "profile": 0})
    b1 = spec["batch"]
    while True:
        r1 = run_variant(model_name, spec, variant, b1, probe, device, count_syncs=False)
        if r1["status"] == "ok" or b1 <= 8:
            break
        b1 //= 2
    if r1["status"] != "ok":
        return r1
    b0 = max(8, b1 // 2)
    r0 = run_variant(model_name, spec, variant, b0, probe, device, count_syncs=False)
    slope = (r1["peak_mem_gib"] - r0["peak_mem_gib"]) / max(1, b1 - b0)
    intercept = r1["peak_mem_gib"] - slope * b1
    batch = int((args.fill_fraction * total - intercept) / max(slope, 1e-6)) // 8 * 8
    batch = max(8, min(args.max_batch, batch))
    for _ in range(4):
        row = run_variant(model_name, spec, variant, batch, args, device)
        if row["status"] != "oom" or batch <= 8:
            break
        batch = max(8, int(batch * 0.85) // 8 * 8)
    row["fill_gib_per_img"] = slope
    return row


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: slowdown (I-JEPA img/s / variant img/s) and memory ratio vs I-JEPA at the same
    batch, and per pool point the N=8 / N=1 step-time ratio."""
    ratios = []
    for r in rows:
        same = {x["variant"]: x for x in rows if x["model"] == r["model"] and x["batch"] == r["batch"] and x["status"] == "ok"}
        base = same.get("ijepa")
        ref = next((x for x in rows if x["model"] == r["model"] and x["variant"] == "ijepa"
                    and x["batch"] == r["batch"] and x.get("gflop_per_img")), None)
        if r.get("gflop_per_img") and ref is not None:
            r["flops_vs_ijepa"] = r["gflop_per_img"] / ref["gflop_per_img"]
        if r["status"] == "ok" and base is not None:
            r["slowdown_vs_ijepa"] = base["img_per_s"] / r["img_per_s"]
            r["mem_vs_ijepa"] = r["peak_mem_gib"] / base["peak_mem_gib"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        ok = {r["variant"]: r for r in rows if r["model"] == m and r["status"] == "ok"}
        for point in ("xattn", "block"):
            a, b = ok.get(f"tc_n1_{point}"), ok.get(f"tc_n8_{point}")
            if a and b and a["batch"] == b["batch"]:
                ratios.append({"model": m, "ratio": f"step time N=8 / N=1 ({point})", "value": b["step_ms"] / a["step_ms"]})
        a, b = ok.get("tc_n8_xattn"), ok.get("tc_n8_block")
        if a and b and a["batch"] == b["batch"]:
            ratios.append({"model": m, "ratio": "step time N=8 block / xattn", "value": b["step_ms"] / a["step_ms"]})
            ratios.append({"model": m, "ratio": "peak memory N=8 block / xattn",
                           "value": b["peak_mem_gib"] / a["peak_mem_gib"]})
    return ratios


COLUMNS = [
    ("model", "model", ""), ("variant", "variant", ""), ("batch", "B", "d"), ("status", "status", ""),
    ("img_per_s", "img/s", ".1f"), ("step_ms", "step ms", ".1f"), ("peak_mem_gib", "peak GiB", ".2f"),
    ("gflop_per_img", "GFLOP/img", ".4g"), ("tflops", "TFLOP/s", ".2f"), ("mfu", "MFU", ".1%"),
    ("slowdown_vs_ijepa", "x slower", ".2f"), ("mem_vs_ijepa", "x mem", ".2f"), ("flops_vs_ijepa", "x FLOP", ".2f"),
    ("context_tokens", "ctx tok", ".0f"), ("collate_ms", "collate ms", ".1f"), ("host_syncs", "syncs", "d"),
    ("compile_s", "compile s", ".1f"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny CPU models (vit_pico, vit_micro at 64 px): smoke test")
    p.add_argument("--models", default=None, help="comma list; default vit_base,vit_large,vit_huge (--tiny: vit_pico)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--batch-size", default=None,
                   help="int (every model), 'fill' (largest batch per variant that fits), or default per model")
    p.add_argument("--fill-fraction", type=float, default=0.9, help="fraction of device memory --batch-size fill aims at")
    p.add_argument("--max-batch", type=int, default=2048)
    p.add_argument("--words", type=int, default=None, help="S words per caption (default 64; --tiny 16)")
    p.add_argument("--text-dim", type=int, default=None, help="d_t (default 768, T5-base; --tiny 32)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager fallback on failure)")
    p.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                   help="blocks: compile each transformer block once per block class (train.compile_scope)")
    p.add_argument("--attention-impl", choices=["auto", "fused", "eager"], default="auto",
                   help="model.text_attention_impl: the fused Triton text cross-attention or the eager one")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --tiny 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps, not timed (default 5; --tiny 2; compile +3)")
    p.add_argument("--pool", type=int, default=3, help="distinct collated batches cycled through")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: table by device name)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (and MFU)")
    p.add_argument("--flops-only", action="store_true", help="only count FLOPs per image (meta device, no timing)")
    p.add_argument("--flops-from", default=None,
                   help="JSON of an earlier --flops-only run: take GFLOP/img from it for rows of the same model, "
                        "variant, batch and checkpointing (the count is exact and device independent) instead of "
                        "counting again")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS more steps per variant: time per kernel category "
                        "(printed, and written as <stem>_profile.csv + one top-kernel .txt per variant)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard with FSDP2 as train.distributed=fsdp does (under torchrun, or a process group "
                        "of one made here): measures FSDP2's own cost on one GPU")
    p.add_argument("--loop-syncs", action="store_true",
                   help="add the training loop's host sync per step (the finite-loss check); "
                        "the default step has none, so the pair measures what it costs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny on cpu: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench", help="folder for JSON + CSV ('' = do not write)")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.models = (args.models or ("vit_pico" if tiny else "vit_base,vit_large,vit_huge")).split(",")
    args.variants = args.variants.split(",")
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    table = {**FULL_MODELS, **TINY_MODELS}
    for m in args.models:
        if m not in table:
            p.error(f"unknown model {m!r}; choose from {list(table)}")
    args.words = args.words or (16 if tiny else 64)
    args.text_dim = args.text_dim or (32 if tiny else 768)
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.steps = args.steps or (5 if tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if tiny else 5) + (3 if args.compile else 0)
    args.known_flops = load_known_flops(args.flops_from) if args.flops_from else {}
    return args


def load_known_flops(path: str) -> dict[tuple[str, str, int, bool], float]:
    try:
        rows = json.loads(open(path).read())["rows"]
        return {(r["model"], r["variant"], int(r["batch"]), bool(r["act_ckpt"])): float(r["gflop_per_img"])
                for r in rows if r.get("gflop_per_img")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--flops-from {path}: not a benchmarks.train_step JSON with gflop_per_img rows ({e})")


def main(argv=None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads or (args.tiny and device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)  # tiny models: one thread is faster and steadier on shared cores
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    table = {**FULL_MODELS, **TINY_MODELS}
    rows = []
    for m in args.models:
        spec = table[m]
        for v in args.variants:
            t0 = time.perf_counter()
            if args.batch_size == "fill":
                row = fill_batch(m, spec, v, args, device)
            else:
                row = run_variant(m, spec, v, int(args.batch_size or spec["batch"]), args, device)
            log.info("%s %s B=%s: %s %.1f img/s (%.0f s)", m, v, row["batch"], row["status"],
                     row.get("img_per_s") or 0.0, time.perf_counter() - t0)
            rows.append(row)
    ratios = add_ratios(rows)
    meta = metadata(device, sys.argv if argv is None else ["benchmarks.train_step", *argv])
    meta["peak_tflops"] = peak_tflops(device, args.peak_tflops)
    meta["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "tag", "known_flops")}
    print(f"\n{meta['device']} | torch {meta['torch']} | commit {meta['commit'][:10]}{' (dirty)' if meta['dirty'] else ''}"
          f" | {args.precision} | S={args.words} d_t={args.text_dim} | {args.steps} timed steps after {args.warmup} warm-up")
    print(format_table(rows, COLUMNS))
    if ratios:
        print()
        print(format_table(ratios, [("model", "model", ""), ("ratio", "ratio", ""), ("value", "value", ".2f")]))
    if device.type == "cpu":
        print("(CPU: 'peak GiB' is the process's max resident memory so far, not per variant)")
    profiles = [{"model": r["model"], "variant": r["variant"], "batch": r["batch"], **g}
                for r in rows for g in r.pop("profile", [])]
    tops = {(r["model"], r["variant"]): r.pop("profile_top") for r in rows if "profile_top" in r}
    if profiles:
        print(f"\nprofile ({args.profile} steps per variant; {'CUDA kernels' if device.type == 'cuda' else 'aten ops'}, self time)")
        print(format_table(profiles, [("model", "model", ""), ("variant", "variant", ""), ("category", "category", ""),
                                      ("ms_per_step", "ms/step", ".2f"), ("share", "share", ".1%"),
                                      ("calls_per_step", "calls/step", ".0f")]))
    if args.out:
        kind = "flops" if args.flops_only else device.type
        stem = f"train_step_{'tiny_' if args.tiny else ''}{kind}{'_' + args.tag if args.tag else ''}"
        j, c = write_results(args.out, stem, meta, rows, {"ratios": ratios})
        print(f"wrote {j} and {c}")
        if profiles:
            _, pc = write_results(args.out, f"{stem}_profile", meta, profiles)
            for (m, v), top in tops.items():
                write_profile(args.out, f"{stem}_profile_{m}_{v}", top, meta)
            print(f"wrote {pc} and {len(tops)} top-kernel lists")
    if args.fsdp and dist.is_initialized():
        dist.destroy_process_group()
    return {"meta": meta, "rows": rows, "ratios": ratios}


if __name__ == "__main__":
    main()
