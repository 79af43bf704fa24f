"""Run by test_text_xattn.py in a child process with TRITON_INTERPRET=1 (to run these alone:
``TRITON_INTERPRET=1 python -m pytest tests/kernels/text_xattn_cases.py``).

The fused N-caption text cross-attention (Triton, run by the interpreter on CPU) against the
eager path: pooled outputs, cosine maps, both regularizer terms, and gradients w.r.t. the
queries, word keys and values, cosine keys, tokens, word features and projection weights.

Tolerances (norms over whole tensors). float32: |fused - eager| <= 1e-5 |eager| + 1e-7 RMS
for every output and gradient; the two paths differ only in summation order. bfloat16
(autocast, as in training): both are compared with the float32 eager result on the same
weights and inputs (the q, k, v-level test: on the same bf16 values), and the fused path's error may be at most 2x the eager path's + 1 % + 1e-4
RMS (it rounds less: logits stay float32, one rounding per output).
"""
from __future__ import annotations

import copy

import pytest
import torch

from tcjepa.config import load_config
from tcjepa.data.batch import JEPABatch
from tcjepa.kernels.text_xattn import resolve_impl, set_text_attention_impl, text_cross_attention
from tcjepa.models.conditioning import TextCrossAttention
from tcjepa.models.jepa import JEPA
from tcjepa.models.losses import grounding_terms

pytestmark = pytest.mark.usefixtures("interpreter")


def word_mask(B, N, S, gen):
    """Random caption lengths in [1, S], one caption with a single word."""
    lengths = torch.randint(1, S + 1, (B, N, 1), generator=gen)
    lengths[0, 0] = 1
    return torch.arange(S) < lengths


def two_layers(impl, layers, h, text, mask, bf16=False):
    """Two conditioned layers (the second on the first's output), the loss the predictor's
    text path feeds into training: a projection of the pooled output + the regularizers."""
    for layer in layers:
        layer.text_attention_impl = impl
        layer.zero_grad(set_to_none=True)
    h = h.detach().clone().requires_grad_(True)
    text = text.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out1, cos1 = layers[0].max_over_captions(h, text, mask)
        out2, cos2 = layers[1].max_over_captions(h + out1, text, mask)
    terms = grounding_terms([cos1, cos2], mask)
    weight = torch.linspace(-1, 1, out2.numel()).view_as(out2)
    loss = (out2.float() * weight).sum() + 0.1 * terms.sparse + 0.5 * terms.consist
    loss.backward()
    got = {"out1": out1, "out2": out2, "cos1": cos1, "cos2": cos2, "sparse": terms.sparse,
           "consist": terms.consist, "grad_h": h.grad, "grad_text": text.grad}
    for i, layer in enumerate(layers):
        got.update({f"grad_{i}.{n}": p.grad for n, p in layer.named_parameters()})
    return {k: v.detach().float() for k, v in got.items()}


def close(a, b, rtol=1e-5, atol=1e-7):
    """|a - b| <= rtol |b| + atol sqrt(numel) (norms over the whole tensor): the absolute part
    is for gradients that are zero in exact arithmetic (the keys' bias under centred keys)."""
    return ((a - b).norm() <= rtol * b.norm() + atol * b.numel() ** 0.5).item()


def bf16_no_worse(fused, eager, reference):
    """The fused bf16 result at most 2x as far from the float32 one as the eager bf16 result,
    + 1 % of its norm + 1e-4 RMS."""
    e, f = (eager - reference).norm(), (fused - reference).norm()
    return (f <= 2 * e + 0.01 * reference.norm() + 1e-4 * reference.numel() ** 0.5).item(), f"fused {f:.3g} eager {e:.3g}"


def make_case(B, Q, N, S, D=24, text_dim=20, keys="raw", seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers = [TextCrossAttention(D, text_dim, grounding_keys=keys) for _ in range(2)]
    h = torch.randn(B, Q, D, generator=gen)
    text = torch.randn(B, N, S, text_dim, generator=gen)
    return layers, h, text, word_mask(B, N, S, gen)


CASES = {  # S, Q and D are not powers of two; every case has padded words and a one-word caption
    "padded": dict(B=2, Q=13, N=3, S=5),
    "centered_keys": dict(B=2, Q=13, N=3, S=5, keys="centered"),
    "one_caption": dict(B=2, Q=11, N=1, S=6),
    "eight_captions": dict(B=2, Q=9, N=8, S=7),
    "batch_1": dict(B=1, Q=21, N=2, S=3, D=72),  # D > 64: the backward's D chunks, the last one partial
    "two_token_blocks": dict(B=1, Q=70, N=2, S=3),  # 64 tokens per program: two add into each word
    "wide": dict(B=1, Q=9, N=3, S=4, D=136),  # D > 128: two forward chunks, the second partial
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_eager_float32(case):
    layers, h, text, mask = make_case(**CASES[case])
    eager = two_layers("eager", layers, h, text, mask)
    fused = two_layers("fused", layers, h, text, mask)
    assert eager["sparse"] > 0 and eager["consist"] > 0
    for key in eager:
        assert close(fused[key], eager[key]), key


@pytest.mark.parametrize("case", ["eight_captions"])
def test_fused_bf16_is_as_close_to_float32_as_eager_bf16(case):
    layers, h, text, mask = make_case(**CASES[case], keys="centered")
    reference = two_layers("eager", layers, h, text, mask)
    eager = two_layers("eager", layers, h, text, mask, bf16=True)
    fused = two_layers("fused", layers, h, text, mask, bf16=True)
    for key in reference:
        ok, msg = bf16_no_worse(fused[key], eager[key], reference[key])
        assert ok, f"{key}: {msg}"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, None)])
@pytest.mark.parametrize("centered", [False, True])
def test_gradients_wrt_queries_keys_values(dtype, tol, centered):
    gen = torch.Generator().manual_seed(1)
    B, Q, N, S, D = 2, 10, 4, 6, 20
    q32, k32, v32 = (torch.randn(*s, generator=gen) for s in ((B, Q, D), (B, N, S, D), (B, N, S, D)))
    mask = word_mask(B, N, S, gen)
    w_out, w_cos = torch.randn(B, Q, D, generator=gen), torch.rand(B, N, Q, S, generator=gen)

    def grads(impl, dt, rounded_to=None):
        q, k, v = (t.detach().to(rounded_to or dt).to(dt).requires_grad_(True) for t in (q32, k32, v32))
        ck = (k - 0.3 * k.mean(2, keepdim=True)) if centered else None
        out, cos = text_cross_attention(q, k, v, mask, 0.2, cosine_keys=ck, impl=impl)
        ((out.float() * w_out).sum() + (cos.float() * w_cos).sum()).backward()
        return [t.detach().float() for t in (out, cos, q.grad, k.grad, v.grad)]

    names = ["out", "cosines", "d_queries", "d_keys", "d_values"]
    if tol is not None:
        for name, f, e in zip(names, grads("fused", dtype), grads("eager", dtype)):
            assert close(f, e, rtol=tol), name
        return
    # Reference: float32 on the same bf16 inputs. (From the unrounded inputs, a few relu gates of
    # cosines near 0 flip, and each flip moves d_queries by a whole word's term: ~10 % here.)
    ref = grads("eager", torch.float32, rounded_to=dtype)
    for name, f, e, r in zip(names, grads("fused", dtype), grads("eager", dtype), ref):
        ok, msg = bf16_no_worse(f, e, r)
        assert ok, f"{name}: {msg}"


def test_ties_go_to_the_first_caption_as_in_eager():
    """Identical captions give exactly equal per-caption outputs: torch.max sends the gradient
    to the first of them, and so must the kernel's int8 argmax."""
    layers, h, text, mask = make_case(B=2, Q=7, N=3, S=4)
    text = text[:, :1].expand_as(text).contiguous()
    mask = mask[:, :1].expand_as(mask).contiguous()
    layer = layers[0]
    q, k, v = layer.q(h), layer.k(text), layer.proj(layer.v(text))
    for impl in ("fused", "eager"):
        vv = v.detach().clone().requires_grad_(True)
        out, _ = text_cross_attention(q.detach(), k.detach(), vv, mask, layer.scale, impl=impl)
        out.sum().backward()
        assert vv.grad[:, 0].abs().sum() > 0
        assert torch.equal(vv.grad[:, 1:], torch.zeros_like(vv.grad[:, 1:])), impl
    eager = two_layers("eager", layers, h, text, mask)
    fused = two_layers("fused", layers, h, text, mask)
    for key in eager:
        assert close(fused[key], eager[key]), key


def test_jepa_step_fused_matches_eager():
    """The config switch reaches every conditioned layer; a whole TC-JEPA N=3 loss and its
    gradients agree between the two paths."""
    tiny = ["model.encoder=vit_pico", "model.patch_size=8", "data.image_size=32", "model.predictor_depth=2",
            "model.predictor_width=32", "model.predictor_heads=2", "text.dim=12"]
    gen = torch.Generator().manual_seed(0)
    batch = JEPABatch(images=torch.randn(2, 3, 32, 32, generator=gen),
                 context_idx=torch.stack([torch.randperm(16, generator=gen)[:6] for _ in range(2)]),
                 target_idx=torch.randint(0, 16, (2, 2, 3), generator=gen),
                 text=torch.randn(2, 3, 5, 12, generator=gen), word_mask=word_mask(2, 3, 5, gen))
    torch.manual_seed(0)
    eager = JEPA(load_config(None, tiny + ["model.text_attention_impl=eager"]))
    fused = copy.deepcopy(eager)
    set_text_attention_impl(fused, "fused")
    assert {m.text_attention_impl for m in eager.modules() if isinstance(m, TextCrossAttention)} == {"eager"}
    results = []
    for model in (eager, fused):
        out = model(batch)
        out["loss"].backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (oe, ge), (of, gf) = results
    for key in ("loss", "loss_pred", "loss_sparse", "loss_consist"):
        torch.testing.assert_close(of[key], oe[key], rtol=1e-5, atol=1e-7)
    assert set(gf) == set(ge)
    for name in ge:
        assert close(gf[name], ge[name]), name


def test_impl_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu) == "eager"  # auto is fused on CUDA only, even when interpreting
    assert resolve_impl("fused", cpu) == "fused"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="fused needs Triton and a CUDA device"):
        resolve_impl("fused", cpu)
    with pytest.raises(ValueError, match="one of"):
        resolve_impl("flash", cpu)


def test_fused_call_inside_a_compiled_region():
    """Under torch.compile the kernel call is left out of the graph (a graph break); the
    projections around it are traced (backend aot_eager: dynamo + AOTAutograd, no codegen)."""
    layers, h, text, mask = make_case(B=2, Q=9, N=3, S=5, keys="centered")
    layer = layers[0]
    layer.text_attention_impl = "fused"
    compiled = torch.compile(layer.max_over_captions, backend="aot_eager")
    results = []
    for fn in (layer.max_over_captions, compiled):
        layer.zero_grad(set_to_none=True)
        out, cos = fn(h, text, mask)
        (out.sum() + cos.sum()).backward()
        results.append([out.detach(), cos.detach()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*results):
        assert close(a, b)


def test_other_tiles_give_the_same_result():
    """A tile sweep's configurations (benchmarks.text_xattn --tile-sweep) compute the same thing:
    16-token blocks in all three kernels (several per image), 16-wide D chunks in the forward and
    dq (three per row at D=40, the last one partial), 32-wide in dK / dV."""
    from tcjepa.kernels.text_xattn import _tiles, tile_overrides

    layers, h, text, mask = make_case(B=2, Q=37, N=3, S=5, D=40)
    eager = two_layers("eager", layers, h, text, mask)
    tiles = dict(forward={"BLOCK_Q": 16, "BLOCK_D": 16, "num_warps": 2}, dq={"BLOCK_Q": 16, "BLOCK_D": 16},
                 dkv={"BLOCK_Q": 16, "BLOCK_D": 32})
    with tile_overrides(**tiles):
        assert [_tiles(k, 37, 5, 40)["BLOCK_D"] for k in ("forward", "dq", "dkv")] == [16, 16, 32]
        fused = two_layers("fused", layers, h, text, mask)
    assert [_tiles(k, 37, 5, 40)["BLOCK_D"] for k in ("forward", "dq", "dkv")] == [64, 64, 64]  # restored
    for key in eager:
        # The keys' bias gradient cancels (the softmax's part sums to zero over the words), so
        # summing three token blocks in another order moves it by ~4e-5 of its norm.
        assert close(fused[key], eager[key], rtol=1e-4 if key.endswith("k.bias") else 1e-5), key
    with pytest.raises(ValueError, match="cannot be set"):
        with tile_overrides(forward={"BLOCK_S": 64}):
            pass
    with pytest.raises(ValueError, match="powers of two"):
        with tile_overrides(dq={"BLOCK_Q": 24}):
            pass
    with pytest.raises(ValueError, match="no kernel 'backward'"):
        with tile_overrides(backward={"BLOCK_Q": 16}):
            pass
