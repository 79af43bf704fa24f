"""Triton kernels of the fused N-caption text cross-attention (see ``text_xattn``).

Forward: one program per (image, block of BLOCK_Q predictor tokens, chunk of BLOCK_D output
channels) loops over the N captions. Per caption it computes the logits q K^T (over all of D),
the softmax over that caption's real words, its chunk of the output P V and the patch-word
cosines; the outputs are max-pooled over captions in (BLOCK_Q, BLOCK_D) registers, so the
(B, N, Q, D) per-caption tensor never reaches memory. Each chunk's program recomputes the
logits (D / BLOCK_D times at D=384: three, a small share of the work); the first version held
the whole width instead (D=384 padded to 512), and ptxas spilled 1.8 KB of registers per
thread inside its loop over captions. Kept for backward: the winning caption per output
element (int8), the softmax log-normaliser per (image, caption, token), the cosine keys'
inverse norms per word and the cosine map (which the regularizers keep anyway).

Backward: two kernels that work through D in chunks of BLOCK_D (whole (BLOCK_S, D) tiles
need more shared memory than an H100 has). ``text_xattn_bwd_dq``: per (image, token block),
recomputes the probabilities from the log-normaliser, gives dq, and writes the probabilities,
their softmax gradient dS (both (B, N, Q, S) in the inputs' dtype, as the products that use
them take it) and the inverse query norms. ``text_xattn_bwd_dkv``: per (caption, D chunk, image), dK
and dV of the caption's words from those maps, summed over all token blocks in registers, so
no atomics and a deterministic result. (Its first version recomputed the logits and dP over
all of D in every D chunk's program: at D=384 six times, most of the backward's products.)

Shapes (contiguous): q (B, Q, D); k, v, cosine keys (B, N, S, D; the backward reads the
cosine keys from ``ck_ptr`` always, which points at k when they are the raw keys); word mask (B, N, S) int8;
outputs (B, Q, D), argmax (B, Q, D) int8, cosines (B, N, Q, S), log-normaliser (B, N, Q) fp32,
inverse cosine-key norms (B, N, S) fp32; backward maps P and dS (B, N, Q, S), inverse query
norms (B, Q) fp32.

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
    q_ptr, k_ptr, v_ptr, ck_ptr, mask_ptr, out_ptr, arg_ptr, cos_ptr, lse_ptr, kn_ptr,
    N, Q, S, D, scale,
    HAS_CK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One (image, token block, D chunk): per caption the logits over all of D (summed over D
    chunks), the softmax, and P V for this program's chunk, max-pooled over captions in
    (BLOCK_Q, BLOCK_D) registers. The logits are recomputed by each chunk's program (D / BLOCK_D
    times, a small share of the work); the chunk-0 program stores the log-normaliser and cosines,
    and the first token block's the inverse cosine-key norms (for the backward)."""
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c0 = tl.program_id(2) * BLOCK_D
    first_chunk = tl.program_id(2) == 0
    word = tl.arange(0, BLOCK_S)
    dim = tl.arange(0, BLOCK_D)
    tok_in, word_in = tok < Q, word < S
    qs_in = tok_in[:, None] & word_in[None, :]
    q_row = b * Q * D + tok * D
    qsq = tl.zeros((BLOCK_Q,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        qc = tl.load(q_ptr + q_row[:, None] + d0 + dim[None, :], mask=tok_in[:, None] & (d0 + dim < D)[None, :],
                     other=0.0).to(tl.float32)
        qsq += tl.sum(qc * qc, 1)
    inv_qn = 1.0 / tl.maximum(tl.sqrt(qsq), NORM_EPS)
    out_in = tok_in[:, None] & (c0 + dim < D)[None, :]
    out_off = q_row[:, None] + c0 + dim[None, :]
    best = tl.full((BLOCK_Q, BLOCK_D), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK_Q, BLOCK_D), tl.int32)
    for n in range(N):
        bn = b * N + n
        k_row = bn * S * D + word * D
        real = tl.load(mask_ptr + bn * S + word, mask=word_in, other=0) != 0
        dots = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        cdots = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        ksq = tl.zeros((BLOCK_S,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            qd_in = tok_in[:, None] & (d0 + dim < D)[None, :]
            sd_in = word_in[:, None] & (d0 + dim < D)[None, :]
            qc = tl.load(q_ptr + q_row[:, None] + d0 + dim[None, :], mask=qd_in, other=0.0)
            kc = tl.load(k_ptr + k_row[:, None] + d0 + dim[None, :], mask=sd_in, other=0.0)
            dots += tl.dot(qc, tl.trans(kc), input_precision=PRECISION)  # (BLOCK_Q, BLOCK_S)
            if HAS_CK:
                ckc = tl.load(ck_ptr + k_row[:, None] + d0 + dim[None, :], mask=sd_in, other=0.0)
                cdots += tl.dot(qc, tl.trans(ckc), input_precision=PRECISION)
                ksq += tl.sum(ckc.to(tl.float32) * ckc.to(tl.float32), 1)
            else:  # raw keys: the logits' dot products are the cosines' numerators
                ksq += tl.sum(kc.to(tl.float32) * kc.to(tl.float32), 1)
        logits = tl.where(real[None, :], dots * scale, float("-inf"))
        row_max = tl.max(logits, 1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # a caption without words
        p = tl.exp(logits - row_max[:, None])
        total = tl.sum(p, 1)
        total = tl.where(total == 0.0, 1.0, total)  # ... gets zero output, not NaN
        p = p / total[:, None]
        v = tl.load(v_ptr + k_row[:, None] + c0 + dim[None, :], mask=word_in[:, None] & (c0 + dim < D)[None, :],
                    other=0.0)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        # Compare in the output dtype, as the eager path's max over its rounded per-caption
        # outputs does: values equal after rounding go to the first caption there too.
        o = o.to(out_ptr.dtype.element_ty).to(tl.float32)
        better = o > best
        best = tl.where(better, o, best)
        arg = tl.where(better, n, arg)
        if first_chunk:
            tl.store(lse_ptr + bn * Q + tok, row_max + tl.log(total), mask=tok_in)
            if not HAS_CK:
                cdots = dots
            inv_kn = 1.0 / tl.maximum(tl.sqrt(ksq), NORM_EPS)
            if tl.program_id(1) == 0:
                tl.store(kn_ptr + bn * S + word, inv_kn, mask=word_in)
            cos = cdots * inv_qn[:, None] * inv_kn[None, :]
            cos = tl.where(real[None, :] & (cos > 0), cos, 0.0)
            cos_off = (bn * Q + tok[:, None]) * S + word[None, :]
            tl.store(cos_ptr + cos_off, cos.to(cos_ptr.dtype.element_ty), mask=qs_in)
    tl.store(out_ptr + out_off, best.to(out_ptr.dtype.element_ty), mask=out_in)
    tl.store(arg_ptr + out_off, arg.to(tl.int8), mask=out_in)


def text_xattn_bwd_dq(
    q_ptr, k_ptr, v_ptr, ck_ptr, mask_ptr, arg_ptr, cos_ptr, lse_ptr, dout_ptr, dcos_ptr, dq_ptr,
    p_ptr, ds_ptr, qn_ptr, kn_ptr,
    N, Q, S, D, scale,
    HAS_CK: tl.constexpr, HAS_DCOS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """dq for one (image, token block): per caption the (BLOCK_Q, BLOCK_S) maps, then dq's D
    chunks, added into this program's own float32 rows (zeroed by the caller). The maps P and
    dS and the inverse query norms are written for ``text_xattn_bwd_dkv``; the cosine keys'
    inverse norms come from the forward."""
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    word = tl.arange(0, BLOCK_S)
    dim = tl.arange(0, BLOCK_D)
    tok_in, word_in = tok < Q, word < S
    qs_in = tok_in[:, None] & word_in[None, :]
    q_row = b * Q * D + tok * D
    for n in range(N):
        bn = b * N + n
        k_row = bn * S * D + word * D
        real = tl.load(mask_ptr + bn * S + word, mask=word_in, other=0) != 0
        lse = tl.load(lse_ptr + bn * Q + tok, mask=tok_in, other=0.0)
        dots = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        dp = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        qsq = tl.zeros((BLOCK_Q,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            qd_in = tok_in[:, None] & (d0 + dim < D)[None, :]
            sd_in = word_in[:, None] & (d0 + dim < D)[None, :]
            qd_off = q_row[:, None] + d0 + dim[None, :]
            sd_off = k_row[:, None] + d0 + dim[None, :]
            qc = tl.load(q_ptr + qd_off, mask=qd_in, other=0.0)
            kc = tl.load(k_ptr + sd_off, mask=sd_in, other=0.0)
            won = tl.load(arg_ptr + qd_off, mask=qd_in, other=-1).to(tl.int32) == n
            gc = tl.where(won, tl.load(dout_ptr + qd_off, mask=qd_in, other=0.0), 0.0).to(qc.dtype)
            dots += tl.dot(qc, tl.trans(kc), input_precision=PRECISION)
            dp += tl.dot(gc, tl.trans(tl.load(v_ptr + sd_off, mask=sd_in, other=0.0)), input_precision=PRECISION)
            qsq += tl.sum(qc.to(tl.float32) * qc.to(tl.float32), 1)
        p = tl.where(real[None, :] & tok_in[:, None], tl.exp(dots * scale - lse[:, None]), 0.0)
        ds = p * (dp - tl.sum(p * dp, 1)[:, None]) * scale  # softmax backward over the words
        inv_qn = 1.0 / tl.maximum(tl.sqrt(qsq), NORM_EPS)
        inv_kn = tl.load(kn_ptr + bn * S + word, mask=word_in, other=0.0)
        cs_off = (bn * Q + tok[:, None]) * S + word[None, :]
        tl.store(p_ptr + cs_off, p.to(p_ptr.dtype.element_ty), mask=qs_in)
        tl.store(ds_ptr + cs_off, ds.to(ds_ptr.dtype.element_ty), mask=qs_in)
        cos = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        dc = tl.zeros((BLOCK_Q, BLOCK_S), tl.float32)
        if HAS_DCOS:
            cos = tl.load(cos_ptr + cs_off, mask=qs_in, other=0.0).to(tl.float32)
            dc = tl.where(cos > 0, tl.load(dcos_ptr + cs_off, mask=qs_in, other=0.0).to(tl.float32), 0.0)
        # d cos / dq = (khat - cos qhat) / |q|; the qhat part sums dc cos over the words, which the
        # stored map gives (cos = O where relu's and the mask's gate is open).
        along_q = tl.sum(dc * cos, 1)
        if n == N - 1:  # the same norms for every caption: stored once
            tl.store(qn_ptr + b * Q + tok, inv_qn, mask=tok_in)
        for d0 in range(0, D, BLOCK_D):
            qd_in = tok_in[:, None] & (d0 + dim < D)[None, :]
            sd_in = word_in[:, None] & (d0 + dim < D)[None, :]
            qd_off = q_row[:, None] + d0 + dim[None, :]
            sd_off = k_row[:, None] + d0 + dim[None, :]
            kc = tl.load(k_ptr + sd_off, mask=sd_in, other=0.0)
            dq = tl.dot(ds.to(kc.dtype), kc, input_precision=PRECISION)
            if HAS_DCOS:
                khat = tl.load(ck_ptr + sd_off, mask=sd_in, other=0.0).to(tl.float32) * inv_kn[:, None]
                qhat = tl.load(q_ptr + qd_off, mask=qd_in, other=0.0).to(tl.float32) * inv_qn[:, None]
                gq = tl.dot(dc.to(kc.dtype), khat.to(kc.dtype), input_precision=PRECISION)
                dq += (gq - qhat * along_q[:, None]) * inv_qn[:, None]
            tl.store(dq_ptr + qd_off, tl.load(dq_ptr + qd_off, mask=qd_in, other=0.0) + dq, mask=qd_in)


def text_xattn_bwd_dkv(
    q_ptr, ck_ptr, arg_ptr, cos_ptr, dout_ptr, dcos_ptr, p_ptr, ds_ptr, qn_ptr, kn_ptr, dk_ptr, dv_ptr, dck_ptr,
    N, Q, S, D,
    HAS_CK: tl.constexpr, HAS_DCOS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK, dV (and dK of the cosine keys) of one caption's words, one D chunk, summed over
    every token block in registers: no atomics. P, dS and the query norms come from ``text_xattn_bwd_dq``,
    the key norms from the forward; the
    chunks of one caption are neighbours in the grid, so their tiles are read from L2."""
    chunks = tl.cdiv(D, BLOCK_D)
    n = tl.program_id(0) // chunks
    c0 = (tl.program_id(0) % chunks) * BLOCK_D
    b = tl.program_id(1).to(tl.int64)
    bn = b * N + n
    word = tl.arange(0, BLOCK_S)
    dim = tl.arange(0, BLOCK_D)
    word_in = word < S
    k_row = bn * S * D + word * D
    dv = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
    dk = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
    gk = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
    along_k = tl.zeros((BLOCK_S,), tl.float32)
    sc_in = word_in[:, None] & (c0 + dim < D)[None, :]
    for t0 in range(0, Q, BLOCK_Q):
        tok = t0 + tl.arange(0, BLOCK_Q)
        tok_in = tok < Q
        qs_in = tok_in[:, None] & word_in[None, :]
        cs_off = (bn * Q + tok[:, None]) * S + word[None, :]
        qc_off = b * Q * D + tok[:, None] * D + c0 + dim[None, :]
        qc_in = tok_in[:, None] & (c0 + dim < D)[None, :]
        qc = tl.load(q_ptr + qc_off, mask=qc_in, other=0.0)
        won = tl.load(arg_ptr + qc_off, mask=qc_in, other=-1).to(tl.int32) == n
        gc = tl.where(won, tl.load(dout_ptr + qc_off, mask=qc_in, other=0.0), 0.0).to(qc.dtype)
        p = tl.load(p_ptr + cs_off, mask=qs_in, other=0.0).to(qc.dtype)
        ds = tl.load(ds_ptr + cs_off, mask=qs_in, other=0.0).to(qc.dtype)
        dv += tl.dot(tl.trans(p), gc, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds), qc, input_precision=PRECISION)
        if HAS_DCOS:
            cos = tl.load(cos_ptr + cs_off, mask=qs_in, other=0.0).to(tl.float32)
            dc = tl.where(cos > 0, tl.load(dcos_ptr + cs_off, mask=qs_in, other=0.0).to(tl.float32), 0.0)
            along_k += tl.sum(dc * cos, 0)
            qhat = qc.to(tl.float32) * tl.load(qn_ptr + b * Q + tok, mask=tok_in, other=0.0)[:, None]
            gk += tl.dot(tl.trans(dc.to(qc.dtype)), qhat.to(qc.dtype), input_precision=PRECISION)
    sc_off = k_row[:, None] + c0 + dim[None, :]
    tl.store(dv_ptr + sc_off, dv, mask=sc_in)
    if HAS_DCOS:
        inv_kn = tl.load(kn_ptr + bn * S + word, mask=word_in, other=0.0)
        # d cos / dk = (qhat - cos khat) / |k|, summed over the tokens
        khat = tl.load(ck_ptr + sc_off, mask=sc_in, other=0.0).to(tl.float32) * inv_kn[:, None]
        dck = (gk - khat * along_k[:, None]) * inv_kn[:, None]
        if HAS_CK:
            tl.store(dck_ptr + sc_off, dck, mask=sc_in)
        else:
            dk += dck
    tl.store(dk_ptr + sc_off, dk, mask=sc_in)


@functools.cache
def _jitted(interpret: bool):
    del interpret  # the cache key: triton.jit reads the mode itself
    return triton.jit(text_xattn_fwd), triton.jit(text_xattn_bwd_dq), triton.jit(text_xattn_bwd_dkv)


def compiled_kernels():
    """(forward, backward dq, backward dK dV) jitted for the current mode: the GPU compiler, or the interpreter
    when ``TRITON_INTERPRET=1`` (read now, not at import)."""
    return _jitted(bool(knobs.runtime.interpret))
