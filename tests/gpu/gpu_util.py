"""Shared helpers of the GPU tests (imported by tests/gpu/test_*_gpu.py)."""

from __future__ import annotations

import os

import pytest
import torch

from sharq_vllm import ops
from sharq_vllm.reference import quantize_weight

FMTS = ["nvfp4", "mxfp4"]
PATTERNS = ["4:8-pairs", "2:4", "dense"]
DTYPES = [torch.bfloat16, torch.float16]
_seed = [int.from_bytes(os.urandom(4), "little")]

GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def fresh_gen() -> torch.Generator:
    _seed[0] += 1
    return torch.Generator(device="cpu").manual_seed(_seed[0])


def heavy(m, k, dtype, outliers=4, scale=60.0, device="cuda"):
    """Fresh Student-t(3) data with a few outlier channels (new seed every call)."""
    g = fresh_gen()
    z = torch.randn(m, k, generator=g)
    chi = torch.randn(m, k, 3, generator=g).pow(2).sum(-1) / 3.0
    t = z / chi.sqrt()
    idx = torch.randperm(k, generator=g)[:outliers]
    t[:, idx] *= scale
    return t.to(dtype).to(device)


def require_kernels():
    ok, why = ops.kernel_path_available("cuda")
    print(f"\n[sharq] kernel path: ok={ok} ({why})")
    assert ok, f"SharQ CUDA extension not available: {why}"


def bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def packed_weight(n, k, block=32):
    w = heavy(n, k, torch.float32, outliers=2, scale=8.0, device="cuda")
    payload = quantize_weight(w, block=block)
    packed = ops.pack_weight(payload, "cuda")
    assert packed.layout == ops.LAYOUT_TILED
    return payload, packed


def rel(y, ref):
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()
