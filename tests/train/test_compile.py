"""Regional torch.compile (train.compile_scope=blocks): same loss and gradients as eager, one
compiled graph per block class reused by every layer, and a way back to eager."""
from __future__ import annotations

import copy

import pytest
import torch

from tcjepa.config import load_config
from tcjepa.data.batch import JEPABatch
from tcjepa.models.jepa import JEPA
from tcjepa.train.compile import compile_for_training, drop_compiled_regions
from tcjepa.train.distributed import transformer_blocks

TINY = ["model.encoder=vit_pico", "model.patch_size=8", "data.image_size=32", "model.predictor_depth=2",
        "model.predictor_width=32", "model.predictor_heads=2", "text.dim=12"]


def batch():
    g = torch.Generator().manual_seed(0)
    return JEPABatch(images=torch.randn(2, 3, 32, 32, generator=g),
                context_idx=torch.stack([torch.randperm(16, generator=g)[:6] for _ in range(2)]),
                target_idx=torch.randint(0, 16, (2, 2, 3), generator=g),
                text=torch.randn(2, 3, 5, 12, generator=g), word_mask=torch.arange(5) < torch.tensor([[[2], [5], [1]]] * 2))


def loss_and_grads(model):
    out = model(batch())
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_loss_and_compile_once_per_block_class():
    torch.manual_seed(0)
    eager = JEPA(load_config(None, TINY))
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_for_training(compiled, "blocks") is compiled
    loss_c, grads_c = loss_and_grads(compiled)
    loss_e, grads_e = loss_and_grads(eager)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert set(grads_c) == set(grads_e)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)
    blocks = transformer_blocks(compiled)
    assert len(blocks) == 2 * len(compiled.encoder.blocks) + len(compiled.predictor.blocks)
    # Frames dynamo compiled: the encoder block (with grad), the target encoder's block (no grad),
    # the predictor block: a few graphs, not one per layer.
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < graphs < len(blocks), graphs
    drop_compiled_regions(compiled)
    assert all(b._compiled_call_impl is None for b in blocks)
    compiled.zero_grad(set_to_none=True)
    torch.testing.assert_close(loss_and_grads(compiled)[0], loss_e, rtol=1e-6, atol=1e-7)


def test_compile_scope_is_checked():
    with pytest.raises(ValueError, match="compile_scope must be blocks or model"):
        compile_for_training(torch.nn.Linear(2, 2), "layers")
    with pytest.raises(ValueError, match="no transformer blocks"):
        compile_for_training(torch.nn.Linear(2, 2), "blocks")
