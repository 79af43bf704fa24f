"""Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors. Triton reads the
variable when it is first imported (its own library functions are jitted then), so the kernel
cases run in a child process that starts with it set (test_text_xattn.py): nothing leaks into
the other tests' process."""
from __future__ import annotations

import os

import numpy as np
import pytest


def _bf16_safe_dot(original):
    """triton 3.8's interpreter multiplies bf16 operands as their raw uint16 storage (its
    create_dot converts only fp8); widen them to float32 first, which is what the tensor
    cores do (exact products, float32 accumulation). The kernels' own code is unchanged."""
    import triton.language as tl
    from triton.runtime import interpreter

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    return create_dot


@pytest.fixture
def interpreter(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("kernel cases need TRITON_INTERPRET=1 from process start (run via test_text_xattn.py)")
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    monkeypatch.setattr(builder, "create_dot", _bf16_safe_dot(builder.create_dot))
    yield
