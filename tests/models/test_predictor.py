"""The predictor against direct, slow re-computations of the paper's equations."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from tcjepa.models.conditioning import CaptionPool, TextCrossAttention, centered_keys
from tcjepa.models.predictor import Predictor
from tcjepa.models.losses import grounding_terms, word_cosines

torch.manual_seed(0)


def make_text(B=2, N=3, S=5, d=12, lengths=(5, 3, 1)):
    t = torch.randn(B, N, S, d)
    mask = torch.zeros(B, N, S, dtype=torch.bool)
    for n, L in enumerate(lengths[:N]):
        mask[:, n, :L] = True
    return t, mask


def literal_xattn(xattn: TextCrossAttention, h, text, mask):
    """Per image, per caption, per token: softmax(q K^T * scale) V, then W_O."""
    B, Q, D = h.shape
    N = text.shape[1]
    out = torch.zeros(B, N, Q, D)
    for b in range(B):
        for n in range(N):
            words = text[b, n][mask[b, n]]
            K, V = xattn.k(words), xattn.v(words)
            for i in range(Q):
                q = xattn.q(h[b, i])
                a = torch.softmax(K @ q * xattn.scale, dim=0) @ V
                out[b, n, i] = xattn.proj(a)
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_cross_attention_matches_literal_per_caption_computation(scale):
    xattn = TextCrossAttention(8, 12, scale=scale)
    h = torch.randn(2, 4, 8)
    text, mask = make_text()
    fast, probs, cosines = xattn(h, text, mask)
    assert probs is None and cosines is None
    slow = literal_xattn(xattn, h, text, mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    again, probs, cosines = xattn(h, text, mask, return_attention=True, return_cosines=True)
    torch.testing.assert_close(again, fast)
    assert scale == (xattn.scale != 1.0)
    # Attention rows are distributions over the real words of each caption.
    assert probs.shape == (2, text.shape[1], 4, text.shape[2])
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert (probs.masked_select(~mask[:, :, None, :].expand_as(probs)) == 0).all()
    # The cosines share the logits' dot products; they equal the reference word_cosines.
    torch.testing.assert_close(cosines, word_cosines(xattn.q(h), xattn.k(text), mask), atol=1e-6, rtol=1e-5)


def test_xattn_pooling_equals_max_over_literal_caption_states():
    """max_n(x + a_n) computed by the block == x + max_n(a_n) from the literal loop."""
    D, heads, d_t = 16, 2, 12
    pred = Predictor(embed_dim=24, grid_size=(4, 4), dim=D, depth=1, num_heads=heads, text_dim=d_t)
    blk = pred.blocks[0]
    B, M, T = 2, 2, 5
    x = torch.randn(B * M, T, D)
    text, mask = make_text(B=B, d=d_t)
    got, _, _ = blk(x, M, text=_text_input(text, mask))

    x1 = x + blk.attn(blk.norm1(x))
    h = blk.norm_x(x1).reshape(B, M * T, D)
    a = literal_xattn(blk.xattn, h, text, mask)  # (B, N, M*T, D)
    states = torch.stack([x1.reshape(B, M * T, D) + a[:, n] for n in range(a.shape[1])])
    x2 = states.max(dim=0).values.reshape(B * M, T, D)
    want = x2 + blk.mlp(blk.norm2(x2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_block_pool_point_equals_each_caption_running_the_whole_block():
    D, d_t = 16, 12
    pred = Predictor(embed_dim=24, grid_size=(4, 4), dim=D, depth=1, num_heads=2, text_dim=d_t,
                     caption_pool_point="block")
    blk = pred.blocks[0]
    B, M, T = 2, 2, 5
    x = torch.randn(B * M, T, D)
    text, mask = make_text(B=B, d=d_t)
    got, _, _ = blk(x, M, text=_text_input(text, mask))
    per_caption = []
    for n in range(text.shape[1]):
        xn = x + blk.attn(blk.norm1(x))  # every caption runs its own self-attention
        h = blk.norm_x(xn).reshape(B, M * T, D)
        a = literal_xattn(blk.xattn, h, text[:, n:n + 1], mask[:, n:n + 1])[:, 0]
        xn = xn + a.reshape(B * M, T, D)
        per_caption.append(xn + blk.mlp(blk.norm2(xn)))
    want = torch.stack(per_caption).max(dim=0).values
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unconditioned_block_is_a_plain_timm_vit_block():
    pred = Predictor(embed_dim=24, grid_size=(4, 4), dim=16, depth=2, num_heads=2, text_dim=None)
    for blk in pred.blocks:
        ref = Block(16, 2, mlp_ratio=4.0, qkv_bias=True, norm_layer=lambda d, **kw: torch.nn.LayerNorm(d, eps=1e-6, **kw))
        ref.load_state_dict(blk.state_dict())  # strict: same parameters, nothing extra
        x = torch.randn(3, 7, 16)
        torch.testing.assert_close(blk(x, 1)[0], ref(x))


def test_ijepa_predictor_has_no_text_parameters():
    names = [n for n, _ in Predictor(24, (4, 4), 16, 2, 2, text_dim=None).named_parameters()]
    assert not [n for n in names if any(k in n for k in ("xattn", "adaln", "pool", "feature"))]
    with pytest.raises(ValueError, match="unconditioned"):
        Predictor(24, (4, 4), 16, 2, 2, text_dim=None)(
            torch.randn(1, 3, 24), torch.arange(3)[None], torch.arange(3, 5)[None, None],
            text=torch.randn(1, 1, 2, 4), word_mask=torch.ones(1, 1, 2, dtype=torch.bool),
        )


@pytest.mark.parametrize("pool", ["max", "mean", "attention"])
def test_caption_pool_kinds(pool):
    r = torch.randn(2, 4, 3, 8)
    p = CaptionPool(pool, 8)
    out = p(r)
    assert out.shape == (2, 3, 8)
    if pool == "max":
        torch.testing.assert_close(out, r.max(1).values)
    else:  # a zero query gives uniform weights: attention starts as the mean
        torch.testing.assert_close(out, r.mean(1))


def test_padding_words_change_nothing():
    pred = Predictor(embed_dim=24, grid_size=(4, 4), dim=16, depth=2, num_heads=2, text_dim=12)
    ctx, cidx, tidx = torch.randn(2, 6, 24), torch.randint(0, 16, (2, 6)), torch.randint(0, 16, (2, 2, 3))
    text, mask = make_text(B=2, d=12)
    out1 = pred(ctx, cidx, tidx, text=text, word_mask=mask)
    text2 = torch.where(mask[..., None], text, torch.randn_like(text) * 100)
    out2 = pred(ctx, cidx, tidx, text=text2, word_mask=mask)
    torch.testing.assert_close(out1.pred, out2.pred)
    t1 = grounding_terms(out1.cosines, out1.word_mask)
    t2 = grounding_terms(out2.cosines, out2.word_mask)
    torch.testing.assert_close(t1.sparse, t2.sparse)
    torch.testing.assert_close(t1.consist, t2.consist)


def test_padded_context_tokens_change_nothing():
    pred = Predictor(embed_dim=24, grid_size=(4, 4), dim=16, depth=2, num_heads=2, text_dim=12)
    ctx, cidx, tidx = torch.randn(2, 6, 24), torch.randint(0, 16, (2, 6)), torch.randint(0, 16, (2, 2, 3))
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 4:] = False
    text, mask = make_text(B=2, d=12)
    a = pred(ctx, cidx, tidx, valid, text, mask)
    ctx2 = ctx.clone()
    ctx2[0, 4:] = 50.0
    cidx2 = cidx.clone()
    cidx2[0, 4:] = 0
    b = pred(ctx2, cidx2, tidx, valid, text, mask)
    torch.testing.assert_close(a.pred, b.pred)
    ta, tb = (grounding_terms(o.cosines, o.word_mask, o.token_valid) for o in (a, b))
    torch.testing.assert_close(ta.sparse, tb.sparse)


def test_conditioned_layers_subset():
    pred = Predictor(24, (4, 4), 16, depth=3, num_heads=2, text_dim=12, conditioned_layers=[1])
    assert [hasattr(b, "xattn") for b in pred.blocks] == [False, True, False]
    with pytest.raises(ValueError, match="out of range"):
        Predictor(24, (4, 4), 16, depth=3, num_heads=2, text_dim=12, conditioned_layers=[3])
    last = Predictor(24, (4, 4), 16, depth=3, num_heads=2, text_dim=12, conditioned_layers=[-1])
    assert [hasattr(b, "xattn") for b in last.blocks] == [False, False, True]
    with pytest.raises(ValueError, match="out of range"):
        Predictor(24, (4, 4), 16, depth=3, num_heads=2, text_dim=12, conditioned_layers=[-4])


def _text_input(text, mask):
    from tcjepa.models.conditioning import mean_caption_vector
    from tcjepa.models.predictor import TextInput

    return TextInput(text, mask, mean_caption_vector(text, mask))


def test_word_cosines_and_regularizers_match_slow_loops():
    B, N, Q, S, D, L = 2, 3, 4, 5, 6, 3
    _, mask = make_text(B=B, N=N, S=S)
    qs = [torch.randn(B, Q, D) for _ in range(L)]
    ks = [torch.randn(B, N, S, D) for _ in range(L)]
    token_valid = torch.ones(B, Q, dtype=torch.bool)
    token_valid[1, -1] = False
    O = [word_cosines(q, k, mask) for q, k in zip(qs, ks)]
    terms = grounding_terms(O, mask, token_valid)

    sparse_n, consist_n = [], []
    for n in range(N):
        sp, co, count = 0.0, 0.0, 0
        for b in range(B):
            for i in range(Q):
                if not token_valid[b, i]:
                    continue
                count += 1
                o = torch.zeros(L, S)
                for l in range(L):
                    for s in range(S):
                        if mask[b, n, s]:
                            o[l, s] = max(F.cosine_similarity(qs[l][b, i], ks[l][b, n, s], dim=0).item(), 0.0)
                sp += o.sum().item() / L
                co += (o - o.mean(0)).abs().sum().item() / L
        sparse_n.append(sp / count)
        consist_n.append(co / count)
    assert terms.sparse.item() == pytest.approx(sum(sparse_n) / N, rel=1e-5)
    assert terms.consist.item() == pytest.approx(sum(consist_n) / N, rel=1e-5)
    assert terms.positive_fraction.shape == (L,)
    assert 0 < terms.positive_fraction.min() and terms.positive_fraction.max() < 1


def test_all_negative_cosines_zero_both_regularizers():
    """The failure mode the positive-fraction monitor exists for."""
    q = torch.ones(1, 2, 4)
    k = -torch.ones(1, 1, 3, 4)
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    terms = grounding_terms([word_cosines(q, k, mask)] * 2, mask)
    assert terms.sparse.item() == 0 and terms.consist.item() == 0
    assert terms.positive_fraction.tolist() == [0.0, 0.0]


def test_centered_grounding_keys_match_a_slow_loop_and_escape_the_cone():
    """Keys sharing one large component (a cone) let every query sit at negative cosine to every
    word: the raw regularizers are then zero. Centred keys measure the same queries against
    each key minus its caption's mean over real words, which the softmax never sees."""
    B, N, Q, S, D = 2, 3, 4, 5, 6
    _, mask = make_text(B=B, N=N, S=S)
    axis = torch.randn(D)
    k = 0.1 * torch.randn(B, N, S, D) + 5 * axis
    q = -axis + 0.1 * torch.randn(B, Q, D)
    raw = word_cosines(q, k, mask)
    centered = word_cosines(q, centered_keys(k, mask), mask)
    assert raw.max() == 0  # the degenerate minimum
    for b in range(B):
        for n in range(N):
            words = mask[b, n]
            mean = k[b, n][words].mean(0)
            for i in range(Q):
                for s in range(S):
                    want = max(F.cosine_similarity(q[b, i], k[b, n, s] - mean, dim=0).item(), 0.0) if words[s] else 0.0
                    assert centered[b, n, i, s].item() == pytest.approx(want, abs=1e-5)
    # Every caption with 2+ words has a positive centred cosine for every query.
    several = mask.sum(-1) > 1
    assert (centered.amax(-1)[several] > 0).all()


def test_grounding_keys_change_the_cosines_only():
    torch.manual_seed(3)
    raw = TextCrossAttention(8, 12)
    centered = TextCrossAttention(8, 12, grounding_keys="centered")
    centered.load_state_dict(raw.state_dict())
    h = torch.randn(2, 4, 8)
    text, mask = make_text()
    out_raw, p_raw, o_raw = raw(h, text, mask, return_attention=True, return_cosines=True)
    out_c, p_c, o_c = centered(h, text, mask, return_attention=True, return_cosines=True)
    torch.testing.assert_close(out_c, out_raw)
    torch.testing.assert_close(p_c, p_raw)
    assert not torch.allclose(o_c, o_raw)
    torch.testing.assert_close(o_c, word_cosines(raw.q(h), centered_keys(raw.k(text), mask), mask), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="grounding_keys"):
        TextCrossAttention(8, 12, grounding_keys="whitened")


def test_sincos_matches_the_ijepa_numpy_formula():
    import numpy as np

    from tcjepa.models.vit import sincos_2d

    def ijepa(embed_dim, grid_size):  # MAE / I-JEPA reference layout
        grid_h = np.arange(grid_size, dtype=float)
        grid_w = np.arange(grid_size, dtype=float)
        grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

        def one_d(d, pos):
            omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)

        return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)

    np.testing.assert_allclose(sincos_2d(32, 5, 5).numpy(), ijepa(32, 5), atol=1e-6)
    assert math.isclose(float(sincos_2d(32, 5, 5)[0, 16 + 8]), 1.0)  # cos(0) of the row half
