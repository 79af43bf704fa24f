"""The fused kernels fit a Hopper GPU as they are launched, checked without a GPU.

``triton.compile`` with a CUDA target builds the kernels for sm_90 on a CPU machine, ptxas
included, which reports each kernel's registers and spills. What decides their shared memory
is the launch's specialisation: Triton marks pointers and integer arguments divisible by 16,
which lets it pipeline the loads of the loops (each stage buffering more K and V tiles).
Compiled without those marks, the first (whole-width) forward needed 82 KiB; launched on an
H200 by Triton 3.6 with its default three stages it asked for 274 KiB (limit 227 KiB) and
failed. So the checks pass the same marks and options as ``FusedTextCrossAttention`` does.
Spills: that forward also spilled 1.8 KB of registers per thread inside its loop over
captions (255 registers, 4 warps), local-memory traffic in the kernel's hottest loop.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import re

import pytest

triton = pytest.importorskip("triton")
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tcjepa.kernels import text_xattn_triton as kernels  # noqa: E402
from tcjepa.kernels.text_xattn import FORWARD_STAGES, _tiles  # noqa: E402

HOPPER_SHARED_BYTES = 232448  # an H100's / H200's opt-in shared memory per block (227 KiB)
POINTER_TYPES = {"mask_ptr": "*i8", "arg_ptr": "*i8", "lse_ptr": "*fp32", "dq_ptr": "*fp32", "qn_ptr": "*fp32",
                 "kn_ptr": "*fp32"}


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


def launches(Q: int, S: int, D: int) -> list[tuple]:
    """(name, kernel, tiles, extra constants, stages) of each kernel as the launcher runs it."""
    return [("forward", kernels.text_xattn_fwd, _tiles("forward", Q, S, D), {}, FORWARD_STAGES),
            ("backward dq", kernels.text_xattn_bwd_dq, _tiles("dq", Q, S, D), {"HAS_DCOS": True}, None),
            ("backward dk dv", kernels.text_xattn_bwd_dkv, _tiles("dkv", Q, S, D), {"HAS_DCOS": True}, None)]


def compile_as_launched(fn, shape, blocks, extra, stages, centred):
    N, Q, S, D = shape
    blocks = dict(blocks)
    warps = blocks.pop("num_warps")
    constants = {"HAS_CK": centred, "PRECISION": "tf32", **extra, **blocks}
    return compile_for_sm90(fn, {"N": N, "Q": Q, "S": S, "D": D}, constants, warps, stages)


@pytest.mark.parametrize("centred", [False, True], ids=["raw_keys", "centred_keys"])
@pytest.mark.parametrize("shape", [(8, 440, 64, 384), (3, 37, 13, 48)], ids=["vit_l16", "odd"])
def test_each_kernel_fits_hopper_shared_memory_as_launched(shape, centred):
    for name, fn, blocks, extra, stages in launches(*shape[1:]):
        shared = compile_as_launched(fn, shape, blocks, extra, stages, centred).metadata.shared
        assert shared <= HOPPER_SHARED_BYTES, f"{name} at N, Q, S, D = {shape}: {shared} bytes of shared memory"


@pytest.mark.parametrize("centred", [False, True], ids=["raw_keys", "centred_keys"])
def test_no_kernel_spills_registers_at_vit_l16_shapes(centred):
    """ptxas's own report (-v, which Triton passes), read from Triton's ptxas log."""
    shape = (8, 328, 64, 384)  # the ViT-L/16 step's mean: 4 blocks x (48 + 34) tokens per image
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True  # a cached kernel logs nothing
    try:
        for name, fn, blocks, extra, stages in launches(*shape[1:]):
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                compile_as_launched(fn, shape, blocks, extra, stages, centred)
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
            assert spills, f"{name}: no ptxas report in Triton's log:\n{log.getvalue()[-2000:]}"
            assert spills.groups() == ("0", "0"), f"{name} at N, Q, S, D = {shape}: {spills.group(0)}"
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved


def test_the_check_fails_a_tiling_that_does_not_fit():
    """The shared-memory check can fail: 128 tokens x 256 channels, pipelined in 3 stages."""
    compiled = compile_for_sm90(kernels.text_xattn_fwd, {"N": 8, "Q": 440, "S": 64, "D": 384},
                                {"HAS_CK": True, "PRECISION": "tf32", "BLOCK_Q": 128, "BLOCK_S": 64, "BLOCK_D": 256},
                                num_warps=8, num_stages=3)
    assert compiled.metadata.shared > HOPPER_SHARED_BYTES
