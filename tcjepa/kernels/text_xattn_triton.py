"""Triton kernels of the fused N-caption text cross-attention (see ``text_xattn``).

One program per (image, block of BLOCK_Q predictor tokens) loops over the N captions. Per
caption it computes the logits q K^T, the softmax over that caption's real words, the output
P V and the patch-word cosines; the outputs are max-pooled over captions in registers, so the
(B, N, Q, D) per-caption tensor never reaches memory. Kept for backward: the pooled output's
winning caption per element (int8), the softmax log-normaliser per (image, caption, token)
and the cosine map (which the regularizers keep anyway). The backward recomputes the
probabilities from the log-normaliser, writes dq directly and adds the per-block partial
dK, dV (and dK of the cosine keys) into float32 buffers with atomics: a (BLOCK_S, BLOCK_D)
accumulator per caption does not fit in registers, and a token block is one of only
Q / BLOCK_Q writers of its caption's words.

Shapes (contiguous): q (B, Q, D); k, v, cosine keys (B, N, S, D); word mask (B, N, S) int8;
outputs (B, Q, D), argmax (B, Q, D) int8, cosines (B, N, Q, S), log-normaliser (B, N, Q) fp32.

The kernels are plain functions, jitted on first use by ``compiled_kernels``: ``triton.jit``
decides at decoration time between the GPU compiler and the interpreter
(``TRITON_INTERPRET=1``, CPU tensors), and this lets a test pick the interpreter for itself
without setting it for the whole process.
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl
from triton import knobs

NORM_EPS = tl.constexpr(1e-12)  # F.normalize's eps: cosines divide by max(|x|, eps)


def text_xattn_fwd(
    q_ptr, k_ptr, v_ptr, ck_ptr, mask_ptr, out_ptr, arg_ptr, cos_ptr, lse_ptr,
    N, Q, S, D, scale,
    HAS_CK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    word = tl.arange(0, BLOCK_S)
    dim = tl.arange(0, BLOCK_D)
    tok_in, word_in, dim_in = tok < Q, word < S, dim < D
    qd_in = tok_in[:, None] & dim_in[None, :]
    sd_in = word_in[:, None] & dim_in[None, :]
    qs_in = tok_in[:, None] & word_in[None, :]
    qd_off = b * Q * D + tok[:, None] * D + dim[None, :]
    q = tl.load(q_ptr + qd_off, mask=qd_in, other=0.0)
    qf = q.to(tl.float32)
    inv_qn = 1.0 / tl.maximum(tl.sqrt(tl.sum(qf * qf, 1)), NORM_EPS)
    best = tl.full((BLOCK_Q, BLOCK_D), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK_Q, BLOCK_D), tl.int32)
    for n in range(N):
        bn = b * N + n
        sd_off = bn * S * D + word[:, None] * D + dim[None, :]
        k = tl.load(k_ptr + sd_off, mask=sd_in, other=0.0)
        real = tl.load(mask_ptr + bn * S + word, mask=word_in, other=0) != 0
        dots = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_S)
        logits = tl.where(real[None, :], dots * scale, float("-inf"))
        row_max = tl.max(logits, 1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # a caption without words
        p = tl.exp(logits - row_max[:, None])
        total = tl.sum(p, 1)
        total = tl.where(total == 0.0, 1.0, total)  # ... gets zero output, not NaN
        p = p / total[:, None]
        tl.store(lse_ptr + bn * Q + tok, row_max + tl.log(total), mask=tok_in)
        v = tl.load(v_ptr + sd_off, mask=sd_in, other=0.0)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        # Compare in the output dtype, as the eager path's max over its rounded per-caption
        # outputs does: values equal after rounding go to the first caption there too.
        o = o.to(out_ptr.dtype.element_ty).to(tl.float32)
        better = o > best
        best = tl.where(better, o, best)
        arg = tl.where(better, n, arg)
        if HAS_CK:
            ck = tl.load(ck_ptr + sd_off, mask=sd_in, other=0.0)
            cdots = tl.dot(q, tl.trans(ck), input_precision=PRECISION)
            ckf = ck.to(tl.float32)
        else:  # raw keys: the logits' dot products are the cosines' numerators
            cdots = dots
            ckf = k.to(tl.float32)
        inv_kn = 1.0 / tl.maximum(tl.sqrt(tl.sum(ckf * ckf, 1)), NORM_EPS)
        cos = cdots * inv_qn[:, None] * inv_kn[None, :]
        cos = tl.where(real[None, :] & (cos > 0), cos, 0.0)
        cos_off = (bn * Q + tok[:, None]) * S + word[None, :]
        tl.store(cos_ptr + cos_off, cos.to(cos_ptr.dtype.element_ty), mask=qs_in)
    tl.store(out_ptr + qd_off, best.to(out_ptr.dtype.element_ty), mask=qd_in)
    tl.store(arg_ptr + qd_off, arg.to(tl.int8), mask=qd_in)


def text_xattn_bwd(
    q_ptr, k_ptr, v_ptr, ck_ptr, mask_ptr, arg_ptr, cos_ptr, lse_ptr, dout_ptr, dcos_ptr,
    dq_ptr, dk_ptr, dv_ptr, dck_ptr,
    N, Q, S, D, scale,
    HAS_CK: tl.constexpr, HAS_DCOS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    word = tl.arange(0, BLOCK_S)
    dim = tl.arange(0, BLOCK_D)
    tok_in, word_in, dim_in = tok < Q, word < S, dim < D
    qd_in = tok_in[:, None] & dim_in[None, :]
    sd_in = word_in[:, None] & dim_in[None, :]
    qs_in = tok_in[:, None] & word_in[None, :]
    qd_off = b * Q * D + tok[:, None] * D + dim[None, :]
    q = tl.load(q_ptr + qd_off, mask=qd_in, other=0.0)
    qf = q.to(tl.float32)
    inv_qn = 1.0 / tl.maximum(tl.sqrt(tl.sum(qf * qf, 1)), NORM_EPS)
    qhat = qf * inv_qn[:, None]
    dout = tl.load(dout_ptr + qd_off, mask=qd_in, other=0.0).to(q.dtype)
    arg = tl.load(arg_ptr + qd_off, mask=qd_in, other=-1).to(tl.int32)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for n in range(N):
        bn = b * N + n
        sd_off = bn * S * D + word[:, None] * D + dim[None, :]
        k = tl.load(k_ptr + sd_off, mask=sd_in, other=0.0)
        v = tl.load(v_ptr + sd_off, mask=sd_in, other=0.0)
        real = tl.load(mask_ptr + bn * S + word, mask=word_in, other=0) != 0
        lse = tl.load(lse_ptr + bn * Q + tok, mask=tok_in, other=0.0)
        dots = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.where(real[None, :] & tok_in[:, None], tl.exp(dots * scale - lse[:, None]), 0.0)
        g = tl.where(arg == n, dout, 0.0).to(q.dtype)  # the pooled gradient, where caption n won
        tl.atomic_add(dv_ptr + sd_off, tl.dot(tl.trans(p.to(q.dtype)), g, input_precision=PRECISION), mask=sd_in)
        dp = tl.dot(g, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - tl.sum(p * dp, 1)[:, None]) * scale  # softmax backward over the words
        dq += tl.dot(ds.to(q.dtype), k, input_precision=PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        if HAS_DCOS:
            if HAS_CK:
                ckf = tl.load(ck_ptr + sd_off, mask=sd_in, other=0.0).to(tl.float32)
            else:
                ckf = k.to(tl.float32)
            inv_kn = 1.0 / tl.maximum(tl.sqrt(tl.sum(ckf * ckf, 1)), NORM_EPS)
            khat = ckf * inv_kn[:, None]
            cos_off = (bn * Q + tok[:, None]) * S + word[None, :]
            kept = tl.load(cos_ptr + cos_off, mask=qs_in, other=0.0) > 0  # relu's and the mask's gate
            dc = tl.where(kept, tl.load(dcos_ptr + cos_off, mask=qs_in, other=0.0), 0.0).to(q.dtype)
            # d cos / dq = (khat - cos qhat) / |q|, written as a projection off qhat
            gq = tl.dot(dc, khat.to(q.dtype), input_precision=PRECISION)
            dq += (gq - qhat * tl.sum(gq * qhat, 1)[:, None]) * inv_qn[:, None]
            gk = tl.dot(tl.trans(dc), qhat.to(q.dtype), input_precision=PRECISION)
            dck = (gk - khat * tl.sum(gk * khat, 1)[:, None]) * inv_kn[:, None]
            if HAS_CK:
                tl.atomic_add(dck_ptr + sd_off, dck, mask=sd_in)
            else:
                dk += dck
        tl.atomic_add(dk_ptr + sd_off, dk, mask=sd_in)
    tl.store(dq_ptr + qd_off, dq, mask=qd_in)


@functools.cache
def _jitted(interpret: bool):
    del interpret  # the cache key: triton.jit reads the mode itself
    return triton.jit(text_xattn_fwd), triton.jit(text_xattn_bwd)


def compiled_kernels():
    """(forward, backward) jitted for the current mode: the GPU compiler, or the interpreter
    when ``TRITON_INTERPRET=1`` (read now, not at import)."""
    return _jitted(bool(knobs.runtime.interpret))
