"""Same-run comparison with the public I-JEPA code: its training step and ours, one process.

The public code (facebookresearch/ijepa) is not part of this project: ``--reference-ijepa PATH``
names a checkout, imported from there at run time. Its step is timed as its ``src/train.py``
runs it: its ViT encoder and predictor (``src.helper.init_model``), batches from its
``MaskCollator``, its AdamW + GradScaler + lr / wd schedules (``init_opt``), bf16 autocast,
target features layer-normed and masked with its ``apply_masks`` / ``repeat_interleave_batch``,
smooth L1, its ``grad_logger`` and ``float(loss)`` per step, the per-parameter EMA update.
Not reproduced: DDP with one process (its loss all-reduce is a no-op there) and the loader.

Our rows come from ``benchmarks.train_step`` (same timing and memory accounting):
  ijepa eager / compiled, tc_n8_xattn eager attention / fused / fused + compiled
and every ratio in the output is between rows of this one run.

  python -m benchmarks.reference_ijepa --reference-ijepa ../shared/ref/ijepa --device cuda --models vit_large
  python -m benchmarks.reference_ijepa --reference-ijepa ../shared/ref/ijepa --device cpu --tiny   # smoke
"""
from __future__ import annotations

import argparse
import copy
import importlib
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import train_step as ours
from .common import format_table, metadata, peak_tflops, write_results

log = logging.getLogger("benchmarks.reference_ijepa")
MODELS = {**ours.FULL_MODELS, **ours.TINY_MODELS}

# (label, our variant, --attention-impl, --compile); most important first
OUR_ROWS = [
    ("ijepa eager", "ijepa", "auto", False),
    ("tc_n8 fused", "tc_n8_xattn", "fused", False),
    ("ijepa compiled", "ijepa", "auto", True),
    ("tc_n8 fused compiled", "tc_n8_xattn", "fused", True),
    ("tc_n8 eager", "tc_n8_xattn", "eager", False),
]
# The public code's mask settings of configs/in1k_vith14_ep300.yaml (shared by its configs).
MASKS = dict(enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4,
             allow_overlap=False, min_keep=10)


def import_reference(path: str) -> dict[str, Any]:
    """The public code's modules, imported from ``path`` (a checkout holding src/)."""
    root = Path(path)
    if not (root / "src" / "helper.py").is_file():
        raise SystemExit(f"--reference-ijepa {path}: not an I-JEPA checkout (no src/helper.py)")
    sys.path.insert(0, str(root.resolve()))
    names = ("src.helper", "src.masks.multiblock", "src.masks.utils", "src.utils.tensors", "src.utils.logging",
             "src.utils.distributed")
    modules = {n.rsplit(".", 1)[-1]: importlib.import_module(n) for n in names}
    # Its helper logs to the root logger (the whole model printed at build): keep that quiet.
    modules["helper"].logger = logging.getLogger("ijepa.helper")
    modules["helper"].logger.setLevel(logging.WARNING)
    return modules


class ReferenceStep:
    """The public code's model, optimizer and one training step, built from its own functions."""

    def __init__(self, ref: dict[str, Any], model: str, spec: dict[str, Any], device: torch.device, bf16: bool):
        torch.manual_seed(0)
        self.ref, self.device, self.bf16 = ref, device, bf16
        self.encoder, self.predictor = ref["helper"].init_model(
            device=device, patch_size=spec["patch_size"], crop_size=spec["image_size"],
            pred_depth=spec["predictor_depth"], pred_emb_dim=spec["predictor_width"], model_name=model)
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.optimizer, self.scaler, self.lr_sched, self.wd_sched = ref["helper"].init_opt(
            encoder=self.encoder, predictor=self.predictor, wd=0.04, final_wd=0.4, start_lr=2e-4, ref_lr=1e-3,
            final_lr=1e-6, iterations_per_epoch=1000, warmup=40, num_epochs=300, ipe_scale=1.0, use_bfloat16=bf16)
        self.momentum = 0.996

    def forward_loss(self, imgs, masks_enc, masks_pred) -> torch.Tensor:
        apply_masks = self.ref["utils"].apply_masks
        with torch.no_grad():
            h = self.target(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            h = self.ref["tensors"].repeat_interleave_batch(apply_masks(h, masks_pred), len(h), repeat=len(masks_enc))
        z = self.predictor(self.encoder(imgs, masks_enc), masks_enc, masks_pred)
        return self.ref["distributed"].AllReduce.apply(F.smooth_l1_loss(z, h))

    def step(self, batch) -> float:
        (imgs, _), masks_enc, masks_pred = batch
        imgs = imgs.to(self.device, non_blocking=True)
        masks_enc = [m.to(self.device, non_blocking=True) for m in masks_enc]
        masks_pred = [m.to(self.device, non_blocking=True) for m in masks_pred]
        self.lr_sched.step()
        self.wd_sched.step()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.forward_loss(imgs, masks_enc, masks_pred)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.ref["logging"].grad_logger(self.encoder.named_parameters())
        self.optimizer.zero_grad()
        with torch.no_grad():
            for online, target in zip(self.encoder.parameters(), self.target.parameters()):
                target.data.mul_(self.momentum).add_((1.0 - self.momentum) * online.detach().data)
        return float(loss.detach())


def reference_batches(ref, spec, batch: int, pool: int, pin: bool, tiny: bool):
    masks = {**MASKS, "min_keep": spec.get("min_keep", MASKS["min_keep"])} if tiny else MASKS
    collator = ref["multiblock"].MaskCollator(input_size=spec["image_size"], patch_size=spec["patch_size"], **masks)
    gen = torch.Generator().manual_seed(0)
    s = spec["image_size"]
    out = []
    for _ in range(pool):
        (imgs, labels), enc, pred = collator([(torch.randn(3, s, s, generator=gen), 0) for _ in range(batch)])
        if pin:
            imgs, enc, pred = imgs.pin_memory(), [m.pin_memory() for m in enc], [m.pin_memory() for m in pred]
        out.append(((imgs, labels), enc, pred))
    return out


def time_reference(ref, model: str, spec: dict[str, Any], batch: int, args, device: torch.device) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "row": "public ijepa", "variant": "public_ijepa", "batch": batch,
                           "precision": args.precision, "compile": False, "status": "ok"}
    step = None
    try:
        step = ReferenceStep(ref, model, spec, device, bf16=args.precision == "bf16")
        pool = reference_batches(ref, spec, batch, args.pool, device.type == "cuda", args.tiny)
        with FlopCounterMode(display=False) as counter:  # one real step: its attention is plain matmuls
            step.step(pool[0])
        row["gflop_per_img"] = counter.get_total_flops() / batch / 1e9
        for i in range(args.warmup):
            step.step(pool[i % len(pool)])
        ours.sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        per_step, t0 = [], time.perf_counter()
        for i in range(args.steps):
            t = time.perf_counter()
            row["loss"] = step.step(pool[i % len(pool)])  # float(loss) syncs every step, as in its train.py
            per_step.append(time.perf_counter() - t)
        ours.sync(device)
        row["img_per_s"] = batch * args.steps / (time.perf_counter() - t0)
        row["step_ms"] = 1e3 * statistics.median(per_step)
        row["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    finally:
        step = None
        ours.release()
    return row


def our_row(label: str, model: str, variant: str, impl: str, compiled: bool, batch: int, args, device) -> dict[str, Any]:
    argv = ["--device", args.device, "--models", model, "--variants", variant, "--attention-impl", impl,
            "--steps", str(args.steps), "--pool", str(args.pool), "--precision", args.precision, "--out", ""]
    argv += ["--tiny"] * args.tiny + ["--compile"] * compiled + (["--flops-from", args.flops_from] if args.flops_from else [])
    argv += ["--no-flops"] * args.no_flops
    try:
        row = ours.run_variant(model, MODELS[model], variant, batch, ours.parse_args(argv), device)
    except Exception as e:  # one failing row (a kernel, a compiler) must not cost the others
        log.exception("%s %s failed", model, label)
        row = {"model": model, "variant": variant, "batch": batch, "status": f"error: {type(e).__name__}: {e}"[:300]}
    return {"row": label, **row}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in dict.fromkeys(r["model"] for r in rows):
        ok = {r["row"]: r for r in rows if r["model"] == m and r["status"] == "ok" and r.get("img_per_s")}
        for num, den, what in [("tc_n8 fused", "ijepa eager", "img/s"), ("tc_n8 eager", "ijepa eager", "img/s"),
                               ("tc_n8 fused compiled", "ijepa compiled", "img/s"),
                               ("tc_n8 fused compiled", "public ijepa", "img/s"), ("ijepa eager", "public ijepa", "img/s"),
                               ("tc_n8 fused", "tc_n8 eager", "img/s"), ("tc_n8 fused", "ijepa eager", "peak memory")]:
            a, b = ok.get(num), ok.get(den)
            key = "img_per_s" if what == "img/s" else "peak_mem_gib"
            if a and b and a.get(key) and b.get(key):
                out.append({"model": m, "ratio": f"{what}: {num} / {den}", "value": a[key] / b[key]})
    return out


COLUMNS = [("model", "model", ""), ("row", "row", ""), ("batch", "B", "d"), ("status", "status", ""),
           ("img_per_s", "img/s", ".1f"), ("step_ms", "step ms", ".1f"), ("peak_mem_gib", "peak GiB", ".2f"),
           ("gflop_per_img", "GFLOP/img", ".4g"), ("mfu", "MFU", ".1%"), ("compile_s", "compile s", ".1f")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-ijepa", required=True, metavar="PATH", help="checkout of facebookresearch/ijepa")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="CPU smoke scale (vit_tiny of the public code vs vit_pico)")
    p.add_argument("--models", default=None, help="comma list (default vit_large; --tiny: vit_tiny)")
    p.add_argument("--rows", default=",".join(r[0] for r in OUR_ROWS), help="our rows, comma list of labels")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--pool", type=int, default=3)
    p.add_argument("--flops-from", default=None, help="as benchmarks.train_step --flops-from")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    a.models = (a.models or ("vit_tiny" if a.tiny else "vit_large")).split(",")
    a.rows = [r for r in OUR_ROWS if r[0] in a.rows.split(",")]
    a.precision = a.precision or ("bf16" if a.device.startswith("cuda") else "fp32")
    a.steps = a.steps or (2 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 5)
    return a


def report(rows, args, device, argv, quiet: bool = False):
    """MFU of the public row, the ratios, the table; JSON + CSV written (again) with all rows so far."""
    peak = peak_tflops(device)
    for r in rows:
        if r.get("mfu") is None and r.get("gflop_per_img") and r.get("img_per_s") and peak:
            r["mfu"] = r["gflop_per_img"] * r["img_per_s"] / 1e3 / peak
    table = ratios(rows)
    meta = metadata(device, sys.argv if argv is None else ["benchmarks.reference_ijepa", *argv])
    meta["reference_ijepa"] = str(args.reference_ijepa)
    if not quiet:
        print(f"\n{meta['device']} | torch {meta['torch']} | commit {meta['commit'][:10]} | {args.precision}")
        print(format_table(rows, COLUMNS))
        if table:
            print()
            print(format_table(table, [("model", "model", ""), ("ratio", "ratio", ""), ("value", "value", ".2f")]))
    if args.out:
        stem = f"reference_ijepa_{device.type}{'_' + args.tag if args.tag else ''}"
        j, c = write_results(args.out, stem, meta, rows, {"ratios": table})
        if not quiet:
            print(f"wrote {j} and {c}")
    return table, meta


def main(argv=None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ref = import_reference(args.reference_ijepa)
    rows = []
    for model in args.models:
        ours_name = "vit_pico" if model == "vit_tiny" and args.tiny else model
        spec = MODELS[ours_name]
        batch = args.batch_size or spec["batch"]
        t0 = time.perf_counter()
        # The public predictor has the encoder's head count: vit_tiny's 3 heads need a width divisible by 3.
        ref_spec = {**spec, "predictor_width": 48} if args.tiny else spec
        try:
            public = time_reference(ref, model, ref_spec, batch, args, device)
        except Exception as e:
            log.exception("public I-JEPA step failed")
            public = {"row": "public ijepa", "variant": "public_ijepa", "batch": batch, "status": f"error: {e}"[:300]}
        rows.append({**public, "model": ours_name, "reference_model": model})
        log.info("%s public ijepa: %s %.1f img/s (%.0f s)", model, rows[-1]["status"], rows[-1].get("img_per_s") or 0,
                 time.perf_counter() - t0)
        for label, variant, impl, compiled in args.rows:
            t0 = time.perf_counter()
            rows.append(our_row(label, ours_name, variant, impl, compiled, batch, args, device))
            report(rows, args, device, argv, quiet=True)  # a stage cut off by its time cap keeps the rows so far
            log.info("%s %s: %s %.1f img/s (%.0f s)", ours_name, label, rows[-1]["status"],
                     rows[-1].get("img_per_s") or 0, time.perf_counter() - t0)
    table, meta = report(rows, args, device, argv)
    return {"meta": meta, "rows": rows, "ratios": table}


if __name__ == "__main__":
    main()
