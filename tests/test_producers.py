"""sharq_vllm/producers.py: the RMSNorm and SiLU * mul the fused producer + preparation kernels
must match bit for bit.

The fixed summation order is checked against an independent float64 evaluation of the same
tree (every partial sum of squares of bf16/fp16 values is exact or rounded identically), and the
whole norm against vLLM's own definition (vllm.ir.ops, where installed) within vLLM's tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from sharq_vllm.producers import rms_norm, silu_and_mul, tree_sum


def _heavy(m, k, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(m, k, generator=g) / (torch.randn(m, k, 3, generator=g).pow(2).mean(-1).sqrt())
    t[:, torch.randperm(k, generator=g)[:3]] *= 40
    return t.to(dtype)


def _tree_python(vals: list[float]) -> float:
    """The same tree in Python, each add rounded to FP32 through a 0-dim tensor."""
    n = 1 << max(0, (len(vals) - 1).bit_length())
    level = [torch.tensor(v, dtype=torch.float32) for v in vals] + [torch.tensor(0.0)] * (n - len(vals))
    while len(level) > 1:
        level = [level[i] + level[i + 1] for i in range(0, len(level), 2)]
    return float(level[0])


@pytest.mark.parametrize("n", [1, 2, 3, 8, 24, 100, 256])
def test_tree_sum_order(n):
    g = torch.Generator().manual_seed(n)
    v = (torch.randn(2, n, generator=g) * torch.logspace(-3, 3, n)).float()
    got = tree_sum(v)
    assert got.shape == (2, 1)
    for row in range(2):
        want = _tree_python(v[row].tolist())
        assert got[row, 0].item() == want


def test_tree_sum_order_matters():
    # the order is part of the contract: a sequential sum gives other bits on this row
    v = torch.tensor([[1e8, 1.0, -1e8, 1.0, 3.0, 1e-3, 7.0, 5.0]], dtype=torch.float32)
    seq = torch.tensor(0.0)
    for x in v[0]:
        seq = seq + x
    assert tree_sum(v).item() != seq.item()


def _norm_by_steps(x, w, eps, r):
    """The norm step by step in float64, each step rounded to FP32 at once (correctly rounded for
    +, *, /, sqrt of FP32 operands: float64 holds over twice FP32's digits), as the kernel rounds
    it; the sum of squares by tree_sum (checked on its own above)."""
    s = x.float() + r.float()
    ss = tree_sum(s * s)
    var = (ss.double() / x.shape[-1]).float()
    veps = (var.double() + float(torch.tensor(eps, dtype=torch.float32))).float()
    inv = (1.0 / veps.double().sqrt().float().double()).float()  # FP32 sqrt, then FP32 division
    yy = (s.double() * inv.double()).float().to(w.dtype)
    return (yy.double() * w.double()).float().to(x.dtype), s.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [64, 192, 4096])
def test_rms_norm_steps(dtype, k):
    x, r = _heavy(3, k, dtype, 1), _heavy(3, k, dtype, 2)
    w = (torch.rand(k, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    eps = 1e-5
    y, r_out = rms_norm(x, w, eps, r)
    want, want_r = _norm_by_steps(x, w, eps, r)
    assert torch.equal(r_out, want_r)
    assert torch.equal(y, want)
    y0, none = rms_norm(x, w, eps)
    assert none is None and y0.dtype == dtype


def test_rms_norm_correctly_rounded_on_many_rows():
    """PyTorch's CPU float32 sqrt is not correctly rounded (torch 2.13: ~17% of inputs one unit
    off), and an inv one or two units off flips a 16-bit output's rounding about once in 4,000
    elements: three rows never showed it, the GPU kernel's bit-exactness tests did (~1 run in
    100 at 513 x 4096). 8,192 fp16 rows of 64 channels: 8 elements differed with torch.sqrt in FP32 (torch 2.13)."""
    x, r = _heavy(8192, 64, torch.float16, 11), _heavy(8192, 64, torch.float16, 12)
    w = (torch.rand(64, generator=torch.Generator().manual_seed(13)) * 2).to(torch.float16)
    y, r_out = rms_norm(x, w, 1e-5, r)
    want, want_r = _norm_by_steps(x, w, 1e-5, r)
    assert torch.equal(r_out, want_r)
    assert int((y.view(torch.int16) != want.view(torch.int16)).sum()) == 0


def test_rms_norm_close_to_vllm_definition():
    ir_ops = pytest.importorskip("vllm.ir.ops")
    x, r = _heavy(5, 1024), _heavy(5, 1024, seed=9)
    w = (torch.rand(1024) + 0.5).to(torch.bfloat16)
    native = ir_ops.fused_add_rms_norm.impls["native"].impl_fn
    want_y, want_r = native(x.clone(), r.clone(), w, 1e-6)
    y, r_out = rms_norm(x, w, 1e-6, r)
    assert torch.equal(r_out, want_r)
    # vLLM's own tolerance for its implementations (bf16: within a unit or two in the last place)
    diff = (y.float() - want_y.float()).abs()
    assert float(diff.max()) <= 2 * float(want_y.float().abs().max()) * 2**-8
    assert float((diff > 0).float().mean()) < 0.01


def test_rms_norm_nonfinite_and_errors():
    x = _heavy(2, 64)
    x[1, 5] = math.inf
    w = torch.ones(64, dtype=torch.bfloat16)
    y, _ = rms_norm(x, w, 1e-6)
    assert torch.isfinite(y[0]).all() and not torch.isfinite(y[1]).all()
    with pytest.raises(ValueError, match="channels"):
        rms_norm(x, torch.ones(32, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="residual shape"):
        rms_norm(x, w, 1e-6, x[:1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_and_mul(dtype):
    gu = _heavy(4, 256, dtype)
    gu[0, 0], gu[0, 1] = -200.0, 60.0  # exp(-g) overflows to Inf (silu = -0); large positive g
    y = silu_and_mul(gu)
    assert y.shape == (4, 128) and y.dtype == dtype
    g, u = gu[:, :128].double(), gu[:, 128:].double()
    s = (g / (1 + torch.exp(-g))).to(dtype).double()  # silu rounded to the dtype first
    want = s * u
    # within half a unit in the last place of the product (+ silu's own last-bit exp difference)
    ulp = torch.finfo(dtype).eps * want.abs()
    assert bool(((y.double() - want).abs() <= ulp + 1e-30).all())
    assert y[0, 0].item() == 0.0 and torch.signbit(y[0, 0]) == torch.signbit(gu[0, 128] * -1)
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(gu[:, :5])
