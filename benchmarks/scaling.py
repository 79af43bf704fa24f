"""FSDP2 scaling estimate: per-GPU memory and communication per step (computed, not measured).

Parameter counts and FLOPs come from the real model (built on the meta device, FLOPs counted
by ``torch.utils.flop_counter`` on batch shapes from the real mask collator); the rest is
the formula below, printed with the numbers. Symbols (per step, per GPU):

  P        GPUs; b = global_batch / P images per GPU
  Pt, Pe   trainable parameters (context encoder + predictor) and EMA target-encoder parameters
  Ps       sharding degree: P for FSDP (full shard), the GPUs of one node for HSDP
  bp, bg   bytes per element of the all-gathered parameters (4 = fp32, what tcjepa.train.loop
           does today: wrap_model(..., param_dtype=None); 2 with param_dtype=bf16) and of the
           reduced gradients (4 = reduce_dtype fp32)

  memory   = (16 Pt + 4 Pe) / Ps                  fp32 master params, grads, AdamW m and v; target
           + 2 * bp * Pblock + 4 * Pblock         two gathered blocks (current + prefetch), one block's grads
           + b * A                                activations per image A (formula in ``activation_bytes``,
                                                  or measured: --act-gib-per-img from train_step --batch-size fill)
  comm     = (Ps-1)/Ps * (bp * (2 Pt + Pe) + bg * Pt)
           all-gather Pt for forward and again for backward (reshard_after_forward), all-gather
           Pe for the target forward, reduce-scatter Pt grads; EMA is shard-local (no traffic);
           activation checkpointing recomputes inside the block's backward, after its
           all-gather (no extra traffic).
  HSDP adds an all-reduce of each GPU's gradient shard across the P/Ps replicas over the
           inter-node network: 2 (R-1)/R * bg * Pt / Ps bytes, R = P / Ps.

  python -m benchmarks.scaling --out results/bench/
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tcjepa.data.batch import JEPABatch
from tcjepa.data.masks import MultiBlockMaskCollator
from tcjepa.models import vit as vit_module
from tcjepa.models.jepa import JEPA

from .common import format_table, metadata, write_results
from .train_step import FULL_MODELS, variant_config

GIB = 2**30


def model_facts(model: str, variant: str, words: int, text_dim: int, batch: int = 64) -> dict[str, Any]:
    spec = FULL_MODELS[model]
    cfg = variant_config(model, spec, variant, batch=batch, words=words, text_dim=text_dim,
                         precision="bf16", act_ckpt=False)
    vit_module.sincos_2d.cache_clear()
    try:
        with torch.device("meta"):
            m = JEPA(cfg)
        m.train()
        collator = MultiBlockMaskCollator(cfg.mask, m.grid_size, seed=0)
        flops, ctx, tgt = [], [], []
        for k in range(3):
            mk = collator.sample(batch, (0, k))
            n = cfg.data.num_captions
            inputs = JEPABatch(images=torch.empty(batch, 3, spec["image_size"], spec["image_size"], device="meta"),
                               context_idx=mk["context_idx"].to("meta"), target_idx=mk["target_idx"].to("meta"))
            if cfg.text.enabled:
                inputs = inputs.with_text(torch.empty(batch, n, words, text_dim, device="meta"),
                                          torch.ones(batch, n, words, dtype=torch.bool, device="meta"))
            with FlopCounterMode(display=False) as fc:
                m(inputs)["loss"].backward()
            flops.append(fc.get_total_flops() / batch)
            ctx.append(mk["context_idx"].shape[1])
            tgt.append(mk["target_idx"].shape[2])
        trainable = sum(p.numel() for mod in (m.encoder, m.predictor) for p in mod.parameters() if p.requires_grad)
        block = sum(p.numel() for p in m.encoder.blocks[0].parameters())
        return dict(cfg=cfg, flops_per_img=sum(flops) / len(flops), context=sum(ctx) / len(ctx),
                    target=sum(tgt) / len(tgt), Pt=trainable, Pe=sum(p.numel() for p in m.target_encoder.parameters()),
                    Pblock=block, dim=m.encoder.embed_dim, depth=len(m.encoder.blocks),
                    patches=m.grid_size[0] * m.grid_size[1])
    finally:
        vit_module.sincos_2d.cache_clear()


def activation_bytes(f: dict[str, Any], act_ckpt: bool) -> float:
    """Per image, bf16 autocast with SDPA (no S^2 attention maps), fp32 residual stream.

    Transformer block: ~40 d bytes per token (LN in/out, q k v, attention out, MLP 4d in/out).
    Encoder: L * 40 d * Kc; with activation checkpointing L * 4 d * Kc (block inputs) + one
    block. Predictor (width D, depth Lp) over M (Kc + Kt) tokens: 40 D per token per layer,
    + text x-attention (6 D + N * 4 D: per-caption attention output and projection, pooled
    by max) + cosine maps (N * S * 6 bytes: relu(cos), masked, the consistency residual);
    caption_pool_point=block adds the MLP per caption (N * 20 D). Target encoder (no grad):
    its output and layer norm (8 d per patch). Image: 3 H W * 4.
    """
    cfg = f["cfg"]
    d, L, Kc, Kt = f["dim"], f["depth"], f["context"], f["target"]
    enc = (L * 4 * d * Kc + 40 * d * Kc) if act_ckpt else L * 40 * d * Kc
    D, Lp, M = cfg.model.predictor_width, cfg.model.predictor_depth, cfg.mask.num_targets
    per_tok = 40 * D
    if cfg.text.enabled:
        N, S = cfg.data.num_captions, cfg.text.max_words
        per_tok += 6 * D + N * 4 * D + N * S * 6
        if cfg.model.caption_pool_point == "block":
            per_tok += N * 20 * D
    pred = Lp * per_tok * M * (Kc + Kt)
    tgt = 8 * d * f["patches"]
    img = 3 * cfg.data.image_size**2 * 4
    return enc + pred + tgt + img


def estimate(f: dict[str, Any], gpus: int, global_batch: int, strategy: str, bp: int, bg: int, act_ckpt: bool,
             act_per_img: float | None, node: int, mfu: float, peak: float, nvlink: float, network: float) -> dict:
    b = global_batch / gpus
    Ps = gpus if strategy == "fsdp" else min(node, gpus)
    R = gpus // Ps
    Pt, Pe, Pb = f["Pt"], f["Pe"], f["Pblock"]
    states = (16 * Pt + 4 * Pe) / Ps
    gathered = 2 * bp * Pb + 4 * Pb
    act = act_per_img if act_per_img is not None else activation_bytes(f, act_ckpt)
    shard_comm = (Ps - 1) / Ps * (bp * (2 * Pt + Pe) + bg * Pt)
    replica_comm = 2 * (R - 1) / R * bg * Pt / Ps if R > 1 else 0.0
    # The shard group's ring crosses nodes when it spans more than one node.
    shard_bw = nvlink if Ps <= node else network
    comm_s = shard_comm / shard_bw + replica_comm / network
    compute_s = f["flops_per_img"] * b / (mfu * peak)
    return {"gpus": gpus, "strategy": strategy.upper() + (f" ({Ps}-way shard x {R})" if strategy == "hsdp" else ""),
            "param_bytes": bp, "per_gpu_batch": b, "states_gib": states / GIB, "gathered_gib": gathered / GIB,
            "activations_gib": b * act / GIB, "memory_gib": (states + gathered + b * act) / GIB,
            "comm_gb": (shard_comm + replica_comm) / 1e9, "inter_node_gb": (shard_comm if Ps > node else 0) / 1e9 + replica_comm / 1e9,
            "comm_ms": 1e3 * comm_s, "compute_ms": 1e3 * compute_s, "comm_over_compute": comm_s / compute_s}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_huge", choices=list(FULL_MODELS))
    p.add_argument("--variant", default="tc_n8_xattn")
    p.add_argument("--global-batch", type=int, default=2048)
    p.add_argument("--gpus", default="8,32,128")
    p.add_argument("--words", type=int, default=64)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--no-act-ckpt", action="store_true", help="configs/pretrain ViT-H uses activation checkpointing")
    p.add_argument("--act-gib-per-img", type=float, default=None,
                   help="measured activation memory per image (train_step --batch-size fill: fill_gib_per_img)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the compute time")
    p.add_argument("--peak-tflops", type=float, default=989.4, help="H100 SXM dense bf16")
    p.add_argument("--nvlink-gbs", type=float, default=360.0, help="achieved NCCL bus bandwidth in a node, GB/s")
    p.add_argument("--network-gbs", type=float, default=45.0, help="achieved bus bandwidth per GPU across nodes (400 Gb/s NIC)")
    p.add_argument("--flop-batch", type=int, default=64, help="batch of the meta-device FLOP count (per-image FLOPs)")
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    act_ckpt = not args.no_act_ckpt
    f = model_facts(args.model, args.variant, args.words, args.text_dim, args.flop_batch)
    act = args.act_gib_per_img * GIB if args.act_gib_per_img else None
    rows = []
    for g in (int(x) for x in args.gpus.split(",")):
        for strategy in ("fsdp", "hsdp"):
            if strategy == "hsdp" and g <= args.gpus_per_node:
                continue
            for bp in (4, 2):
                rows.append(estimate(f, g, args.global_batch, strategy, bp, 4, act_ckpt, act, args.gpus_per_node,
                                     args.mfu, args.peak_tflops * 1e12, args.nvlink_gbs * 1e9, args.network_gbs * 1e9))
    facts = {k: v for k, v in f.items() if k != "cfg"}
    facts.update(model=args.model, variant=args.variant, act_ckpt=act_ckpt,
                 activation_gib_per_img=(act or activation_bytes(f, act_ckpt)) / GIB,
                 activation_source="measured" if act else "formula")
    print(f"{args.model} {args.variant}: trainable {f['Pt'] / 1e6:.0f}M, target encoder {f['Pe'] / 1e6:.0f}M params; "
          f"{f['flops_per_img'] / 1e12:.3f} TFLOP/img (fwd+bwd); context {f['context']:.0f} + {f['cfg'].mask.num_targets}"
          f"x{f['target']:.0f} target tokens; activations {facts['activation_gib_per_img'] * 1024:.0f} MiB/img "
          f"({facts['activation_source']}, act. ckpt {act_ckpt}); global batch {args.global_batch}")
    print(format_table(rows, [
        ("gpus", "GPUs", "d"), ("strategy", "strategy", ""), ("param_bytes", "param B", "d"), ("per_gpu_batch", "b/GPU", ".0f"),
        ("states_gib", "states GiB", ".2f"), ("gathered_gib", "gathered", ".2f"), ("activations_gib", "act GiB", ".1f"),
        ("memory_gib", "total GiB", ".1f"), ("comm_gb", "comm GB", ".2f"), ("inter_node_gb", "inter-node GB", ".2f"),
        ("comm_ms", "comm ms", ".0f"), ("compute_ms", f"compute ms@{args.mfu:.0%}", ".0f"), ("comm_over_compute", "comm/comp", ".2f"),
    ]))
    print("memory = (16 Pt + 4 Pe)/Ps + (2 bp + 4) Pblock + b A;  comm = (Ps-1)/Ps (bp (2 Pt + Pe) + bg Pt) "
          "[+ HSDP 2 (R-1)/R bg Pt/Ps across nodes]")
    meta = metadata(torch.device("cpu"), sys.argv if argv is None else ["benchmarks.scaling", *argv])
    meta["settings"] = vars(args)
    if args.out:
        j, c = write_results(args.out, f"scaling_{args.model}", meta, rows, {"facts": facts, "formula": __doc__})
        print(f"wrote {j} and {c}")
    return {"facts": facts, "rows": rows}


if __name__ == "__main__":
    main()
