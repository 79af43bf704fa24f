"""Numerics: loss curves of the real training step under bf16 autocast vs fp32, compiled vs eager.

Both runs of a pair start from the same weights and see the same batches (a pool made by the
real collator, cycled), so their curves differ only by arithmetic. Reported per pair:
``max_window_rel`` = max over windows of ``--window`` steps of
|mean loss A - mean loss B| / mean loss B (single-step noise averages out; drift does not),
and ``first_rel`` = relative difference of the first step's loss.

Tolerances (what the tests assert, docs/PERFORMANCE.md):
  bf16 vs fp32     max_window_rel <= 0.02 over 300 steps, first_rel <= 2e-3
  compiled vs eager (fp32) max_window_rel <= 1e-3, first_rel <= 1e-4
  fused vs eager text cross-attention (bf16, --pairs attention): the bf16 vs fp32 tolerances

  python -m benchmarks.numerics --device cpu --steps 300 --out results/bench/
  python -m benchmarks.numerics --device cuda --model vit_small --steps 500 --out results/bench/
  python -m benchmarks.numerics --device cuda --model vit_small --steps 200 --pairs attention --tag fused
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from .common import format_table, metadata, write_results
from .train_step import FULL_MODELS, TINY_MODELS, build_harness, make_pool, variant_config

BF16_WINDOW_TOL, BF16_FIRST_TOL = 0.02, 2e-3
COMPILE_WINDOW_TOL, COMPILE_FIRST_TOL = 1e-3, 1e-4

SMALL_MODELS = {**TINY_MODELS, "vit_small": dict(patch_size=16, image_size=96, predictor_depth=4,
                                                 predictor_width=192, predictor_heads=6, batch=32, min_keep=10)}


def loss_curve(model: str, variant: str, steps: int, *, device: str = "cpu", precision: str = "fp32",
               compile_model: bool = False, batch: int | None = None, words: int = 16, text_dim: int = 32,
               pool: int = 8, seed: int = 0, lr: float = 1e-3, attention_impl: str = "auto") -> list[float]:
    """Per-step losses of ``steps`` training steps (the benchmark's step = the loop's step)."""
    spec = {**SMALL_MODELS, **FULL_MODELS}[model]
    batch = batch or spec["batch"]
    cfg = variant_config(model, spec, variant, batch=batch, words=words, text_dim=text_dim, precision=precision,
                         act_ckpt=False, extra=(f"optim.lr={lr}", f"optim.start_lr={lr}", "optim.warmup_epochs=0",
                                                f"model.text_attention_impl={attention_impl}"))
    dev = torch.device(device)
    h = build_harness(cfg, dev, compile_model, seed, bf16_on_cpu=True)
    batches, _ = make_pool(cfg, h.model.grid_size, batch, pool, seed, pin=False)
    losses = [h.step(batches[i % len(batches)]) for i in range(steps)]
    return [float(x) for x in torch.stack(losses).cpu()]


def compare(a: list[float], b: list[float], window: int) -> dict[str, float]:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    n = len(a) // window * window or len(a)
    w = max(1, min(window, n))
    ma, mb = ta[:n].reshape(-1, w).mean(1), tb[:n].reshape(-1, w).mean(1)
    return {"first_rel": float((ta[0] - tb[0]).abs() / tb[0].abs()),
            "max_window_rel": float(((ma - mb).abs() / mb.abs()).max()),
            "final_window_a": float(ma[-1]), "final_window_b": float(mb[-1]),
            "max_step_rel": float(((ta - tb).abs() / tb.abs()).max())}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vit_pico", choices=list({**SMALL_MODELS, **FULL_MODELS}))
    p.add_argument("--variant", default="tc_n8_xattn")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--compile-steps", type=int, default=10)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--pairs", default="precision,compile",
                   help="comma list: precision (bf16 vs fp32), compile (compiled vs eager), attention (fused vs "
                        "eager text cross-attention, bf16; needs the fused kernel, i.e. CUDA)")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    rows, curves = [], {}
    t0 = time.perf_counter()
    pairs = args.pairs.split(",")
    if "precision" in pairs:
        curves["fp32"] = loss_curve(args.model, args.variant, args.steps, device=args.device, precision="fp32")
        curves["bf16"] = loss_curve(args.model, args.variant, args.steps, device=args.device, precision="bf16")
        rows.append({"pair": "bf16 vs fp32", "steps": args.steps, **compare(curves["bf16"], curves["fp32"], args.window),
                     "tol_window": BF16_WINDOW_TOL, "tol_first": BF16_FIRST_TOL})
    if "attention" in pairs:
        for impl in ("fused", "eager"):
            curves[f"bf16_{impl}"] = loss_curve(args.model, args.variant, args.steps, device=args.device,
                                                precision="bf16", attention_impl=impl)
        rows.append({"pair": "fused vs eager text attention (bf16)", "steps": args.steps,
                     **compare(curves["bf16_fused"], curves["bf16_eager"], args.window),
                     "tol_window": BF16_WINDOW_TOL, "tol_first": BF16_FIRST_TOL})
    if "compile" in pairs and not args.skip_compile:
        # One batch, repeated: varying context lengths would make the CPU spend minutes recompiling.
        n = args.compile_steps
        curves["eager"] = loss_curve(args.model, args.variant, n, device=args.device, precision="fp32", pool=1)
        curves["compiled"] = loss_curve(args.model, args.variant, n, device=args.device, precision="fp32", pool=1,
                                        compile_model=True)
        rows.append({"pair": "compiled vs eager (fp32)", "steps": n,
                     **compare(curves["compiled"], curves["eager"], min(args.window, n)),
                     "tol_window": COMPILE_WINDOW_TOL, "tol_first": COMPILE_FIRST_TOL})
    for r in rows:
        r["ok"] = r["max_window_rel"] <= r["tol_window"] and r["first_rel"] <= r["tol_first"]
    meta = metadata(torch.device(args.device), sys.argv if argv is None else ["benchmarks.numerics", *argv])
    meta["settings"] = {**vars(args), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{meta['device']} | torch {meta['torch']} | {args.model} {args.variant}")
    print(format_table(rows, [("pair", "pair", ""), ("steps", "steps", "d"), ("first_rel", "first rel", ".2e"),
                              ("max_window_rel", f"max {args.window}-step window rel", ".2e"),
                              ("max_step_rel", "max step rel", ".2e"), ("tol_window", "tol", ".0e"), ("ok", "ok", "")]))
    if args.out:
        stem = f"numerics_{torch.device(args.device).type}{'_' + args.tag if args.tag else ''}"
        j, c = write_results(args.out, stem, meta, rows, {"curves": curves})
        print(f"wrote {j} and {c}")
    return {"rows": rows, "curves": curves}


if __name__ == "__main__":
    main()
