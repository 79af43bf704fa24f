"""The fused kernels fit a Hopper GPU's shared memory as they are launched, checked without a GPU.

``triton.compile`` with a CUDA target builds the kernels for sm_90 on a CPU machine. What
decides their shared memory is the launch's specialisation: Triton marks pointers and integer
arguments divisible by 16, which lets it pipeline the loads of the loop over captions (each
stage buffering another caption's K and V tiles). Compiled without those marks, the forward
needed 82 KiB; launched on an H200 by Triton 3.6 with its default three stages it asked for
274 KiB (limit 227 KiB) and failed. So the check passes the same marks and options as
``FusedTextCrossAttention`` does.
"""
from __future__ import annotations

import inspect

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tcjepa.kernels import text_xattn_triton as kernels  # noqa: E402
from tcjepa.kernels.text_xattn import FORWARD_STAGES, _backward_blocks, _blocks  # noqa: E402

HOPPER_SHARED_BYTES = 232448  # an H100's / H200's opt-in shared memory per block (227 KiB)
POINTER_TYPES = {"mask_ptr": "*i8", "arg_ptr": "*i8", "lse_ptr": "*fp32", "dq_ptr": "*fp32", "qn_ptr": "*fp32"}


def compile_for_sm90(fn, sizes: dict, constants: dict, num_warps: int, num_stages: int | None):
    names = list(inspect.signature(fn).parameters)
    signature = {n: "constexpr" if n in constants else POINTER_TYPES.get(n, "*bf16") if n.endswith("_ptr")
                 else "fp32" if n == "scale" else "i32" for n in names}
    # What the launcher specialises: 16-byte aligned tensors, sizes that are multiples of 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n.endswith("_ptr") or sizes.get(n, 1) % 16 == 0}
    options = {"num_warps": num_warps, **({"num_stages": num_stages} if num_stages else {})}
    src = ASTSource(fn=triton.jit(fn), signature=signature, constexprs=dict(constants), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.parametrize("centred", [False, True], ids=["raw_keys", "centred_keys"])
@pytest.mark.parametrize("shape", [(8, 440, 64, 384), (3, 37, 13, 48)], ids=["vit_l16", "odd"])
def test_each_kernel_fits_hopper_shared_memory_as_launched(shape, centred):
    N, Q, S, D = shape
    sizes = {"N": N, "Q": Q, "S": S, "D": D}
    forward, backward = _blocks(Q, S, D), _backward_blocks(Q, S, D)
    launches = [("forward", kernels.text_xattn_fwd, forward, {}, FORWARD_STAGES),
                ("backward dq", kernels.text_xattn_bwd_dq, backward, {"HAS_DCOS": True}, None),
                ("backward dk dv", kernels.text_xattn_bwd_dkv, backward, {"HAS_DCOS": True}, None)]
    for name, fn, blocks, extra, stages in launches:
        blocks = dict(blocks)
        warps = blocks.pop("num_warps")
        constants = {"HAS_CK": centred, "PRECISION": "tf32", **extra, **blocks}
        shared = compile_for_sm90(fn, sizes, constants, warps, stages).metadata.shared
        assert shared <= HOPPER_SHARED_BYTES, f"{name} at N, Q, S, D = {shape}: {shared} bytes of shared memory"


def test_the_check_sees_what_failed_on_the_h200():
    """The forward with Triton's default stages at ViT-L/16 shapes is what the H200 refused."""
    blocks = _blocks(440, 64, 384)
    warps = blocks.pop("num_warps")
    compiled = compile_for_sm90(kernels.text_xattn_fwd, {"N": 8, "Q": 440, "S": 64, "D": 384},
                                {"HAS_CK": True, "PRECISION": "tf32", **blocks}, warps, num_stages=3)
    assert compiled.metadata.shared > HOPPER_SHARED_BYTES
