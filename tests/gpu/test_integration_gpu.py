"""GPU: determinism (100 runs), CUDA-graph replay, torch.compile(fullgraph=True), end to end."""

from __future__ import annotations

import pytest
import torch
from gpu_util import (
    GPU_MARKS,
    bits,
    heavy,
    packed_weight,
    rel,
    require_kernels,
)

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch

pytestmark = GPU_MARKS


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    require_kernels()


def test_gemm_repeatable():
    for m in (1, 9, 16, 17, 64, 300):
        _, packed = packed_weight(4096, 4096)
        x = heavy(m, 4096, torch.bfloat16)
        first = ops.sharq_gemm(x, packed)
        for _ in range(100):
            assert torch.equal(bits(ops.sharq_gemm(x, packed)), bits(first)), m


# vLLM's default CUDA-graph capture sizes (1, 2, 4, 8, 16, ..., 512) and one prefill size
@pytest.mark.parametrize("m", [1, 2, 4, *range(8, 513, 8), 2000])
def test_cuda_graph_replay(m):
    _, packed = packed_weight(1024, 2048)
    bias = heavy(1, 1024, torch.bfloat16).reshape(1024)
    static_x = heavy(m, 2048, torch.bfloat16)

    def step():
        return ops.sharq_linear(static_x, packed, bias, "nvfp4", "4:8-pairs")

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = step()
    for _ in range(3):
        new_x = heavy(m, 2048, torch.bfloat16)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops.sharq_linear(new_x, packed, bias, "nvfp4", "4:8-pairs")
        if dispatch.gemm_kernel(m).name == "mma":  # our kernels: bit-identical
            assert torch.equal(bits(static_y), bits(eager))
        else:  # cuBLAS may pick another algorithm under capture
            assert rel(static_y, eager) < 1e-3


def test_torch_compile_fullgraph():
    _, packed = packed_weight(512, 1024)
    bias = heavy(1, 512, torch.bfloat16).reshape(512)

    def f(x):
        xh = torch.ops.sharq.prepare(x, "nvfp4", "2:4")
        return ops.sharq_gemm(xh, packed, bias) * 2.0

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for m in (1, 7, 130):
        x = heavy(m, 1024, torch.bfloat16)
        assert torch.equal(bits(cf(x)), bits(f(x)))


def test_sharq_linear_end_to_end_vs_reference():
    from sharq_vllm.reference import apply_linear

    payload, packed = packed_weight(768, 2048)
    for m in (1, 100):
        x = heavy(m, 2048, torch.bfloat16)
        y = ops.sharq_linear(x, packed, None, "nvfp4", "4:8-pairs")
        cpu_payload = payload.__class__(
            payload.codes.cpu(),
            payload.block_scales.cpu(),
            payload.tensor_scale.cpu(),
            payload.fmt,
            payload.block,
        )
        ref = apply_linear(x.cpu(), cpu_payload, None, "nvfp4", "4:8-pairs")
        assert rel(y.cpu(), ref) < 1e-2


def test_reference_linear_in_cuda_graph():
    """The plugin's PyTorch reference path (used when the kernels are absent) runs inside vLLM's
    CUDA graphs: after a warm-up call it must not copy host tensors to the device (a capture
    error; found on H100 with vLLM 0.26: the FP4 decode table was copied on every call)."""
    from sharq_vllm import reference

    w = heavy(512, 1024, torch.float32, outliers=2, scale=8.0, device="cuda")
    payload = reference.quantize_weight(w, block=32)
    static_x = heavy(8, 1024, torch.bfloat16)

    def step():
        return reference.apply_linear(static_x, payload, None, "nvfp4", "4:8-pairs")

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = step()
    new_x = heavy(8, 1024, torch.bfloat16)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits(static_y), bits(reference.apply_linear(new_x, payload, None, "nvfp4", "4:8-pairs")))
