"""torch.compile for training: the whole model, or region by region (``train.compile_scope``).

Regional compilation compiles every transformer block in place (``nn.Module.compile``) and
nothing around them. Blocks of one class run the same ``forward`` code and dynamo lifts their
parameters to graph inputs, so a 24-block encoder compiles one graph, not 24, and reuses it
for every layer: compilation takes seconds to a minute where the whole TC-JEPA model (encoder,
EMA target, text-conditioned predictor, regularizers) outlasted a 110 s GPU stage. The few
kernels outside the blocks (patch embedding, gathers, losses) stay eager.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .distributed import transformer_blocks, unwrap

CompileScope = Literal["blocks", "model"]


def compile_for_training(model: nn.Module, scope: CompileScope) -> nn.Module:
    """The module to call: ``model`` itself with its blocks compiled in place (``blocks``), or a
    ``torch.compile`` wrapper of all of it (``model``)."""
    if scope == "model":
        return torch.compile(model)
    if scope != "blocks":
        raise ValueError(f"train.compile_scope must be blocks or model, got {scope!r}")
    blocks = transformer_blocks(unwrap(model))
    if not blocks:
        raise ValueError("train.compile_scope=blocks: the model has no transformer blocks to compile")
    for block in blocks:
        block.compile()
    return model


def drop_compiled_regions(model: nn.Module) -> None:
    """Back to eager after a failed compilation: every block runs its plain ``forward`` again
    (a ``model``-scope wrapper is simply no longer called)."""
    for block in transformer_blocks(unwrap(model)):
        block._compiled_call_impl = None  # what nn.Module.compile set; None = the eager call
