"""One conditioned layer's text cross-attention + grounding cosines, fused kernel vs eager.

Forward + backward of ``text_cross_attention``, by default at B=32, Q=440 tokens, N=8
captions, S=64 words, D=384, bf16 (the shape measured since the first GPU run; the ViT-L/16
step's mean is B=128, Q=328, i.e. 4 blocks x (48 context + 34 target tokens): ``--shape
128,328,8,64,384``): the difference between the
two paths, and of each against eager float32 (outputs, cosines, gradients of q, k and v;
relative norm), the time per call (forward alone, the backward as the rest) and its peak
memory above what was allocated before it. The fused path needs CUDA (or TRITON_INTERPRET=1
on CPU, tiny shapes, float32 only). ``--tile-sweep`` then times the fused kernels at other
tile sizes (12 forward tilings timed forward alone; 9 of each backward kernel, dq and dK / dV,
timed forward + backward), each checked against the eager result.

  python -m benchmarks.text_xattn --device cuda --out results/bench/ [--tile-sweep]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import torch

from tcjepa.kernels.text_xattn import _tiles, text_cross_attention, tile_overrides

from .common import format_table, metadata, write_results


def inputs(B, Q, N, S, D, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g).to(device, dtype) for s in ((B, Q, D), (B, N, S, D), (B, N, S, D)))
    lengths = torch.randint(max(1, S // 4), S + 1, (B, N, 1), generator=g)
    return q, k, v, (torch.arange(S) < lengths).to(device)


def run(impl, q, k, v, mask, centered: bool, w_out, w_cos, backward: bool = True):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ck = (k - k.mean(2, keepdim=True)) if centered else None
    out, cos = text_cross_attention(q, k, v, mask, q.shape[-1] ** -0.5, cosine_keys=ck, impl=impl)
    loss = (out.float() * w_out).sum() + (cos.float() * w_cos).sum()
    if not backward:  # the forward as training runs it: inputs that need grad, graph kept
        return [loss.detach()]
    loss.backward()
    return [t.detach().float() for t in (out, cos, q.grad, k.grad, v.grad)]


OUTPUTS = ("out", "cosines", "dq", "dk", "dv")  # what run() returns


def relative_differences(got, reference, prefix: str = "rel_") -> dict[str, float]:
    """|got - reference| / |reference| (norms over whole tensors) for each of run()'s outputs."""
    return {f"{prefix}{name}": float((a - b).norm() / b.norm().clamp_min(1e-12))
            for name, a, b in zip(OUTPUTS, got, reference)}


def timed(fn, device, reps: int) -> tuple[float, float]:
    """Median ms per call and the peak memory above the start (GiB) on CUDA."""
    fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
    return 1e3 * sorted(times)[len(times) // 2], peak


BACKWARD_TILES = [dict(BLOCK_Q=bq, BLOCK_D=bd) for bq, bd in itertools.product((16, 32, 64), (32, 64, 128))]
SWEEP = {  # kernel -> tilings; each timed with the other kernels at their defaults
    "forward": [dict(BLOCK_Q=bq, BLOCK_D=bd, num_warps=w) for bq, bd, w in itertools.product((16, 32, 64), (64, 128), (4, 8))],
    "dq": BACKWARD_TILES,
    "dkv": BACKWARD_TILES,
}


def tile_sweep(q, k, v, mask, w_out, w_cos, device, reps: int) -> list[dict]:
    """The fused path at each candidate tiling (raw keys): time, and its difference from eager.
    ms is the forward alone for the forward's tilings, forward + backward for dq's and dkv's."""
    Q, D, S = q.shape[1], q.shape[2], k.shape[2]
    eager = run("eager", q, k, v, mask, False, w_out, w_cos)
    rows = []
    for kernel, candidates in SWEEP.items():
        for tiles in candidates:
            row = {"kernel": kernel, **tiles}
            try:
                with tile_overrides(**{kernel: tiles}):
                    launched = _tiles(kernel, Q, S, D)
                    row.update(launched_block_q=launched["BLOCK_Q"], launched_block_d=launched["BLOCK_D"],
                               launched_warps=launched["num_warps"])
                    got = run("fused", q, k, v, mask, False, w_out, w_cos)
                    row["ms"], _ = timed(lambda: run("fused", q, k, v, mask, False, w_out, w_cos,
                                                     backward=kernel != "forward"), device, reps)
                row.update(relative_differences(got, eager))
            except Exception as e:  # a tiling the GPU cannot run (shared memory, registers) is a row too
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
            rows.append(row)
            print(f"tiles {kernel} {tiles}: " + (f"{row['ms']:.2f} ms" if "ms" in row else row["error"]), flush=True)
    return rows


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", default="32,440,8,64,384", help="B,Q,N,S,D")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--impls", default="fused,eager")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--tile-sweep", action="store_true",
                   help="also time the fused kernels at other tile sizes (raw keys; ms is forward alone for "
                        "the forward's tiles, forward + backward for those of the two backward kernels)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    B, Q, N, S, D = (int(x) for x in args.shape.split(","))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    impls = args.impls.split(",")
    if device.type == "cpu" and dtype != torch.float32 and ("fused" in impls or args.tile_sweep):
        # Its products of bf16 operands come out wrong by orders of magnitude (8e8 relative here)
        p.error("the fused path on CPU runs under Triton's interpreter, which multiplies bf16 operands as their "
                "raw uint16 storage (tests/kernels/conftest.py patches that for the tests only): use --dtype fp32 "
                "on CPU, or --impls eager")
    q, k, v, mask = inputs(B, Q, N, S, D, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    w_out, w_cos = torch.randn(B, Q, D, generator=g).to(device), torch.rand(B, N, Q, S, generator=g).to(device)
    rows = []
    for centered in (False, True):
        results = {impl: run(impl, q, k, v, mask, centered, w_out, w_cos) for impl in impls}
        # Which of two half-precision paths is nearer the truth: both against eager float32
        # (where the max over captions ties after rounding, the gradient goes whole to the
        # winner, so a tie broken differently moves it between captions).
        exact = (run("eager", q.float(), k.float(), v.float(), mask, centered, w_out, w_cos)
                 if dtype != torch.float32 else None)
        for impl in impls:
            ms, peak = timed(lambda: run(impl, q, k, v, mask, centered, w_out, w_cos), device, args.reps)
            ms_fwd, _ = timed(lambda: run(impl, q, k, v, mask, centered, w_out, w_cos, backward=False), device,
                              args.reps)
            row = {"impl": impl, "keys": "centered" if centered else "raw", "shape": args.shape,
                   "dtype": args.dtype, "ms_fwd": ms_fwd, "ms_bwd": ms - ms_fwd, "ms_fwd_bwd": ms, "peak_gib": peak}
            if impl != "eager" and "eager" in results:
                row.update(relative_differences(results[impl], results["eager"]))
            if exact is not None:
                row.update(relative_differences(results[impl], exact, prefix="fp32_rel_"))
            rows.append(row)
    meta = metadata(device, sys.argv if argv is None else ["benchmarks.text_xattn", *argv])
    cols = [("impl", "impl", ""), ("keys", "keys", ""), ("ms_fwd", "ms fwd", ".2f"), ("ms_bwd", "ms bwd", ".2f"),
            ("ms_fwd_bwd", "ms fwd+bwd", ".2f"), ("peak_gib", "peak GiB", ".3f")]
    cols += [(f"rel_{n}", f"rel {n}", ".1e") for n in OUTPUTS]
    cols += [(f"fp32_rel_{n}", f"vs fp32 {n}", ".1e") for n in ("out", "dq", "dk", "dv")]
    print(f"{meta['device']} | torch {meta['torch']} | B,Q,N,S,D = {args.shape} | {args.dtype}")
    print(format_table(rows, cols))
    sweep = tile_sweep(q, k, v, mask, w_out, w_cos, device, args.reps) if args.tile_sweep else []
    if sweep:
        print(format_table(sweep, [("kernel", "kernel", ""), ("launched_block_q", "BLOCK_Q", ""),
                                   ("launched_block_d", "BLOCK_D", ""), ("launched_warps", "warps", ""),
                                   ("ms", "ms", ".2f"), ("rel_out", "rel out", ".1e"), ("rel_dq", "rel dq", ".1e"),
                                   ("rel_dk", "rel dk", ".1e"), ("error", "error", "")]))
    if args.out:
        j, c = write_results(args.out, f"text_xattn_{device.type}", meta, rows)
        print(f"wrote {j} and {c}")
        if sweep:
            j, c = write_results(args.out, f"text_xattn_tiles_{device.type}", meta, sweep)
            print(f"wrote {j} and {c}")
    return {"meta": meta, "rows": rows, "tiles": sweep}


if __name__ == "__main__":
    main()
