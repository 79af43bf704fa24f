"""Text cross-attention over N captions, max-pooled over captions, with the grounding cosines.

    out[b, q]      = max_n  sum_s softmax_s(scale q_bq . k_bns | real words) v_bns
    cosines[b,n,q,s] = max(cos(q_bq, c_bns), 0), zero on padding words

with c the cosine keys (the raw keys k, or caption-centred ones). ``text_cross_attention``
chooses the implementation (``model.text_attention_impl``):

- ``eager``: PyTorch ops. The per-caption outputs (B, N, Q, D) are a tensor, kept for the
  max's backward, and so are the logits and probabilities (B, N, S, Q).
- ``fused``: one Triton kernel (``text_xattn_triton``) for forward and two for backward. The
  max over captions runs in registers, so nothing of size (B, N, Q, D) is written; backward
  keeps the winning caption per output element (int8), a log-normaliser per (image, caption,
  token), the cosine keys' inverse norms and the cosine map, which it writes in the inputs'
  dtype (bf16 under autocast).
- ``auto``: fused on CUDA when Triton is installed and the queries are bf16 / fp16 (autocast)
  and at most 512 wide, eager elsewhere.

The fused path runs on CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the tests check it against the eager path. Under ``torch.compile`` the fused
call is left out of the graph (one graph break per conditioned layer): the kernel has not
been run under inductor's wrapping of user kernels, and the projections around it still
compile.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator, Optional

import torch
from torch import nn

from ..models.losses import word_cosines

IMPLS = ("auto", "fused", "eager")


# Looked up once: resolve_impl runs inside compiled blocks, where dynamo reads a global but
# would break the graph on an import-system call.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return TRITON_INSTALLED


FUSED_MAX_WIDTH = 512  # the widest the sm_90 checks cover (tests/kernels/test_text_xattn_sm90.py)


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype = torch.bfloat16, width: int = 384) -> str:
    """'fused' or 'eager' for (width)-wide queries of ``dtype`` on ``device``. ``auto`` takes the
    fused kernel where it is meant to run: CUDA, Triton installed, bf16 / fp16 (autocast's
    dtypes: in float32 the forward's tiles exceed an H100's shared memory), D <= 512. A
    requested fused path that cannot run is an error, not a silent fallback; on CPU it runs
    only under Triton's interpreter (TRITON_INTERPRET=1, the tests)."""
    if impl not in IMPLS:
        raise ValueError(f"model.text_attention_impl must be one of {list(IMPLS)}, got {impl!r}")
    if impl == "eager" or device.type == "meta":  # meta: FLOP counting, which sees the eager ops' matmuls
        return "eager"
    half = dtype in (torch.bfloat16, torch.float16)
    on_gpu = device.type == "cuda" and triton_installed()
    if impl == "auto":
        return "fused" if on_gpu and half and width <= FUSED_MAX_WIDTH else "eager"
    interpreted = device.type == "cpu" and triton_installed() and os.environ.get("TRITON_INTERPRET") == "1"
    if not (on_gpu or interpreted):
        raise ValueError(f"model.text_attention_impl=fused needs Triton and a CUDA device (or TRITON_INTERPRET=1 "
                         f"for CPU tensors); tensors are on {device}"
                         f"{'' if triton_installed() else ', Triton is not installed'}")
    if on_gpu and not (half and width <= FUSED_MAX_WIDTH):
        raise ValueError(f"model.text_attention_impl=fused on CUDA takes bf16 / fp16 queries (train.precision=bf16) "
                         f"at most {FUSED_MAX_WIDTH} wide; got {dtype}, width {width}")
    return "fused"


def set_text_attention_impl(module: nn.Module, impl: str) -> None:
    """Set the implementation of every text cross-attention layer inside ``module``."""
    if impl not in IMPLS:
        raise ValueError(f"model.text_attention_impl must be one of {list(IMPLS)}, got {impl!r}")
    for m in module.modules():
        if hasattr(m, "text_attention_impl"):
            m.text_attention_impl = impl


def eager_text_cross_attention(q, k, v, word_mask, scale: float, cosine_keys=None):
    """The reference: q (B, Q, D), k, v (B, N, S, D), word_mask (B, N, S) -> out (B, Q, D),
    cosines (B, N, Q, S). The same operations as ``TextCrossAttention.forward`` then ``max``."""
    B, Q, D = q.shape
    N, S = k.shape[1], k.shape[2]
    dots = torch.bmm(k.reshape(B, N * S, D), q.transpose(1, 2)).view(B, N, S, Q)
    probs = (dots * scale).masked_fill(~word_mask[..., None], float("-inf")).softmax(2)
    out = (probs.transpose(2, 3) @ v).max(dim=1).values
    return out, word_cosines(q, k if cosine_keys is None else cosine_keys, word_mask)


# The forward's tiles at ViT-L/16 shapes (D=384, S=64), compiled for sm_90: ptxas reports no
# register spills for 64 tokens x 128 channels with 8 warps, raw or centred keys, 1 or 2 stages;
# with 4 warps it spills 0.7 KB per thread. (The first forward, 16 tokens x all 512 padded
# channels, 4 warps: 1.8 KB.)
FORWARD_TOKENS, FORWARD_D_CHUNK, FORWARD_WARPS = 64, 128, 8
BACKWARD_D_CHUNK = 64  # the backward's D tiles (dK, dV accumulators: 64 words x 64 per program)


KERNELS = ("forward", "dq", "dkv")  # the backward is two kernels: dq, then dK and dV


def _tiles(kernel: str, Q: int, S: int, D: int) -> dict:
    """A kernel's tiles: whole captions (S, padded to a power of two of at least 16, tl.dot's
    minimum), BLOCK_Q tokens and D in chunks of BLOCK_D. The forward's were chosen on CPU by
    what ptxas reports for sm_90 (no register spills: tests/kernels/test_text_xattn_sm90.py);
    the backward's take fewer tokens as D grows. None is timed on a GPU yet:
    ``benchmarks.text_xattn --tile-sweep`` times others (``tile_overrides``)."""
    block_s = max(16, next_pow2(S))
    if kernel == "forward":
        blocks = dict(BLOCK_Q=min(FORWARD_TOKENS, max(16, next_pow2(Q))), BLOCK_S=block_s,
                      BLOCK_D=min(FORWARD_D_CHUNK, max(16, next_pow2(D))), num_warps=FORWARD_WARPS)
    else:
        width = max(16, next_pow2(D))
        block_q = 16 if width >= 512 else 32 if width >= 256 else 64
        blocks = dict(BLOCK_Q=min(block_q, max(16, next_pow2(Q))), BLOCK_S=block_s,
                      BLOCK_D=min(BACKWARD_D_CHUNK, width), num_warps=4 if block_q * width <= 8192 else 8)
    return {**blocks, **_TILE_OVERRIDES.get(kernel, {})}


_TILE_OVERRIDES: dict[str, dict] = {}
TILE_KEYS = ("BLOCK_Q", "BLOCK_D", "num_warps")


@contextlib.contextmanager
def tile_overrides(**tiles: dict) -> Iterator[None]:
    """Launch the kernels (``forward=``, ``dq=``, ``dkv=``) with other tiles than the defaults,
    for tile sweeps (``python -m benchmarks.text_xattn --tile-sweep``): token block, D chunk,
    warps; block sizes are powers of two of at least 16."""
    for kernel, chosen in tiles.items():
        if kernel not in KERNELS:
            raise ValueError(f"no kernel {kernel!r}: tiles are set for {list(KERNELS)}")
        unknown = set(chosen) - set(TILE_KEYS)
        if unknown:
            raise ValueError(f"{kernel} tiles: {sorted(unknown)} cannot be set; settable: {list(TILE_KEYS)}")
        bad = {k: v for k, v in chosen.items() if k.startswith("BLOCK_") and (v < 16 or v != next_pow2(v))}
        if bad:
            raise ValueError(f"{kernel} tiles {bad}: block sizes are powers of two >= 16")
    saved = dict(_TILE_OVERRIDES)
    _TILE_OVERRIDES.update({k: dict(v) for k, v in tiles.items() if v})
    try:
        yield
    finally:
        _TILE_OVERRIDES.clear()
        _TILE_OVERRIDES.update(saved)


# No software pipelining of the forward's loops: the whole-width forward's loop over captions,
# pipelined with Triton 3.6's default of 3 stages, asked an H200 for 274 KiB of shared memory at
# ViT-L/16 shapes (limit 227 KiB). The chunked forward needs 32 KiB with one stage.
FORWARD_STAGES = 1


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


class FusedTextCrossAttention(torch.autograd.Function):
    """(q, k, v, cosine_keys or None, word_mask, scale) -> (out (B, Q, D), cosines (B, N, Q, S))."""

    @staticmethod
    def forward(ctx, q, k, v, cosine_keys, word_mask, scale):
        from .text_xattn_triton import compiled_kernels

        B, Q, D = q.shape
        N, S = k.shape[1], k.shape[2]
        if N > 127:
            raise ValueError(f"the fused text cross-attention keeps the winning caption as int8: N={N} > 127")
        q = q.contiguous()
        k, v = k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
        ck = None if cosine_keys is None else cosine_keys.to(q.dtype).contiguous()
        mask = word_mask.to(torch.int8).contiguous()
        out = torch.empty_like(q)
        arg = torch.empty(B, Q, D, dtype=torch.int8, device=q.device)
        cos = torch.empty(B, N, Q, S, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, N, Q, dtype=torch.float32, device=q.device)
        inv_knorm = torch.empty(B, N, S, dtype=torch.float32, device=q.device)  # of the cosine keys
        blocks = _tiles("forward", Q, S, D)
        fwd, _, _ = compiled_kernels()
        fwd[(B, -(-Q // blocks["BLOCK_Q"]), -(-D // blocks["BLOCK_D"]))](
            q, k, v, ck if ck is not None else k, mask, out, arg, cos, lse, inv_knorm, N, Q, S, D, float(scale),
            HAS_CK=ck is not None, PRECISION=_precision(q), num_stages=FORWARD_STAGES, **blocks)
        ctx.set_materialize_grads(False)
        ctx.scale = float(scale)
        ctx.has_ck = ck is not None
        ctx.save_for_backward(q, k, v, ck if ck is not None else k, mask, arg, cos, lse, inv_knorm)
        return out, cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dcos):
        from .text_xattn_triton import compiled_kernels

        q, k, v, ck, mask, arg, cos, lse, inv_knorm = ctx.saved_tensors
        B, Q, D = q.shape
        N, S = k.shape[1], k.shape[2]
        dout = torch.zeros_like(q) if dout is None else dout.to(q.dtype).contiguous()
        has_dcos = dcos is not None
        dcos = dcos.contiguous() if has_dcos else cos  # not read when has_dcos is False
        dq = torch.zeros(B, Q, D, dtype=torch.float32, device=q.device)
        dk = torch.empty(B, N, S, D, dtype=q.dtype, device=q.device)
        dv = torch.empty_like(dk)
        dck = torch.empty_like(dk) if ctx.has_ck and has_dcos else dk
        # P and dS for the dK / dV kernel, in the dtype its products take them (B, N, Q, S: S
        # wide, not D), and the inverse query norms.
        probs, dscores = torch.empty_like(cos), torch.empty_like(cos)
        inv_qnorm = torch.empty(B, Q, dtype=torch.float32, device=q.device)
        common = dict(HAS_CK=ctx.has_ck, HAS_DCOS=has_dcos, PRECISION=_precision(q))
        dq_tiles, dkv_tiles = _tiles("dq", Q, S, D), _tiles("dkv", Q, S, D)
        _, bwd_dq, bwd_dkv = compiled_kernels()
        bwd_dq[(B, -(-Q // dq_tiles["BLOCK_Q"]))](q, k, v, ck, mask, arg, cos, lse, dout, dcos, dq,
                                                   probs, dscores, inv_qnorm, inv_knorm, N, Q, S, D, ctx.scale,
                                                   **common, **dq_tiles)
        bwd_dkv[(N * -(-D // dkv_tiles["BLOCK_D"]), B)](q, ck, arg, cos, dout, dcos, probs, dscores, inv_qnorm,
                                                        inv_knorm, dk, dv, dck, N, Q, S, D, **common, **dkv_tiles)
        return dq.to(q.dtype), dk, dv, dck if ctx.has_ck and has_dcos else None, None, None


def _precision(q: torch.Tensor) -> str:
    # float32 inputs: exact float32 products, as the eager path (tf32 would cost ~1e-3 relative)
    return "ieee" if q.dtype == torch.float32 else "tf32"


@torch.compiler.disable
def _fused(q, k, v, word_mask, scale, cosine_keys):
    return FusedTextCrossAttention.apply(q, k, v, cosine_keys, word_mask, scale)


def text_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, word_mask: torch.Tensor, scale: float,
    cosine_keys: Optional[torch.Tensor] = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Q, D) queries, k, v (B, N, S, D) word keys and values, word_mask (B, N, S) True =
    real word, cosine_keys (B, N, S, D) or None (= k) -> out (B, Q, D) max-pooled over the N
    captions, cosines (B, N, Q, S)."""
    if resolve_impl(impl, q.device, q.dtype, q.shape[-1]) == "fused":
        return _fused(q, k, v, word_mask, scale, cosine_keys)
    return eager_text_cross_attention(q, k, v, word_mask, scale, cosine_keys)

