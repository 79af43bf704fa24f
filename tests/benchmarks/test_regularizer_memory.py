"""The memory-lean grounding regularizers equal the literal stacked formulation, values and
gradients, and keep fewer bytes alive for backward."""
import pytest
import torch
import torch.nn.functional as F

from tcjepa.models.losses import grounding_terms, word_cosines


def reference_terms(qs, ks, mask, token_valid=None):
    """The original formulation: clamp * mask, stack all layers (L, B, N, Q, S)."""
    maps = []
    for q, k in zip(qs, ks):
        cos = torch.einsum("bqd,bnsd->bnqs", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
        maps.append(cos.clamp_min(0) * mask[:, :, None, :].to(cos.dtype))
    O = torch.stack(maps)

    def token_mean(x):
        if token_valid is None:
            return x.mean()
        w = token_valid[:, None, :].to(x.dtype)
        return ((x * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1)).mean()

    sparse = token_mean(O.sum(-1).mean(0))
    consist = token_mean((O - O.mean(0, keepdim=True)).abs().sum(-1).mean(0))
    return sparse, consist


def make(B=2, N=3, Q=7, S=5, D=8, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randn(B, Q, D, generator=g, requires_grad=True) for _ in range(L)]
    ks = [torch.randn(B, N, S, D, generator=g, requires_grad=True) for _ in range(L)]
    lengths = torch.randint(1, S + 1, (B, N, 1), generator=g)
    mask = torch.arange(S) < lengths
    valid = torch.ones(B, Q, dtype=torch.bool)
    valid[0, -2:] = False
    return qs, ks, mask, valid


@pytest.mark.parametrize("with_valid", [False, True])
def test_values_and_gradients_match_the_stacked_formulation(with_valid):
    qs, ks, mask, valid = make()
    valid = valid if with_valid else None
    ref_s, ref_c = reference_terms(qs, ks, mask, valid)
    ref_grads = torch.autograd.grad(ref_s * 0.1 + ref_c * 0.5, qs + ks)
    terms = grounding_terms([word_cosines(q, k, mask) for q, k in zip(qs, ks)], mask, valid)
    grads = torch.autograd.grad(terms.sparse * 0.1 + terms.consist * 0.5, qs + ks)
    torch.testing.assert_close(terms.sparse, ref_s)
    torch.testing.assert_close(terms.consist, ref_c)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_gradcheck_double():
    qs, ks, mask, valid = make(B=1, N=2, Q=3, S=4, D=3, L=3)
    qs = [q.detach().double().requires_grad_() for q in qs]
    ks = [k.detach().double().requires_grad_() for k in ks]

    def f(*t):
        L = len(t) // 2
        terms = grounding_terms([word_cosines(q, k, mask) for q, k in zip(t[:L], t[L:])], mask, valid)
        return terms.sparse, terms.consist

    assert torch.autograd.gradcheck(f, tuple(qs + ks))


def test_bf16_maps_reduce_in_float32():
    qs, ks, mask, valid = make(Q=64, S=16, L=6)
    ref_s, ref_c = reference_terms(qs, ks, mask, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = [word_cosines(q.bfloat16(), k.bfloat16(), mask) for q, k in zip(qs, ks)]
        terms = grounding_terms(maps, mask, valid)
    assert maps[0].dtype == torch.bfloat16
    assert terms.sparse.dtype == torch.float32 and terms.consist.dtype == torch.float32
    # bf16 cosines carry ~3 significant digits; the float32 reductions add no further error.
    torch.testing.assert_close(terms.sparse, ref_s.detach(), rtol=1e-2, atol=0)
    torch.testing.assert_close(terms.consist, ref_c.detach(), rtol=2e-2, atol=0)


def saved_bytes(fn):
    """Bytes of tensors autograd saves for backward while running ``fn`` (distinct storages)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_keeps_one_map_per_layer_instead_of_two():
    qs, ks, mask, valid = make(B=4, N=8, Q=96, S=32, D=16, L=6)
    ref_bytes, _ = saved_bytes(lambda: reference_terms(qs, ks, mask, valid))
    new_bytes, _ = saved_bytes(
        lambda: grounding_terms([word_cosines(q, k, mask) for q, k in zip(qs, ks)], mask, valid))
    one_layer = 4 * 8 * 96 * 32 * 4  # one (B, N, Q, S) float32 map
    # The stacked version keeps 2 L maps (clamp input + stacked residual); ours keeps the L maps only.
    assert new_bytes <= ref_bytes - 5.5 * one_layer
