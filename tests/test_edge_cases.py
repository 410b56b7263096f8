"""Hostile activations through the reference (issue 6, numerics part): nothing crashes, nothing
non-finite appears from finite input, non-finite rows never turn into plausible numbers."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharq_vllm import reference as R

CONFIGS = [("nvfp4", "4:8-pairs"), ("nvfp4", "2:4"), ("mxfp4", "2:4"), ("nvfp4", "dense")]


@pytest.mark.parametrize("fmt,pattern", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_single_massive_outlier(fmt, pattern, dtype):
    x = torch.randn(3, 256).to(dtype)
    x[0, 17] = 6e4  # near fp16's max
    x[1, 200] = -1e4
    out = R.sharq_activation(x, fmt, pattern)
    assert torch.isfinite(out).all()
    # the outlier survives (it lives in the backbone), to FP4 precision
    assert abs(out[0, 17].float().item() - 6e4) <= 6e4 / 8
    assert abs(out[1, 200].float().item() + 1e4) <= 1e4 / 8
    # the last row is untouched by the others (per-token scales)
    assert torch.equal(out[2], R.sharq_activation(x[2:], fmt, pattern)[0])


@pytest.mark.parametrize("fmt,pattern", CONFIGS)
def test_constant_and_zero_rows(fmt, pattern):
    x = torch.zeros(4, 128)
    x[1] = 3.0
    x[2] = -0.7
    out = R.sharq_activation(x, fmt, pattern)
    assert torch.all(out[0] == 0) and torch.all(out[3] == 0)
    assert torch.allclose(out[1], x[1], rtol=0.05)  # a constant row is nearly exact
    assert torch.allclose(out[2], x[2], rtol=0.1)


@pytest.mark.parametrize("fmt,pattern", CONFIGS)
def test_subnormal_range_inputs(fmt, pattern):
    x = torch.randn(2, 64, dtype=torch.float16) * 1e-6  # fp16 subnormals start below 6.1e-5
    out = R.sharq_activation(x, fmt, pattern)
    assert torch.isfinite(out).all()
    rel = (out.float() - x.float()).norm() / x.float().norm()
    assert rel < 0.1  # per-token scales follow the row down: no flush to zero


def test_values_at_the_saturation_points():
    # row amax exactly at FP4 max x E4M3 max x tensor scale: codes saturate cleanly
    x = torch.zeros(1, 64)
    x[0, 0] = 2688.0  # 6 * 448
    x[0, 16] = 6.0
    x[0, 32] = 448.0
    out = R.sharq_activation(x, "nvfp4", "2:4")
    assert out[0, 0].item() == 2688.0  # the row max is exactly representable: 6 x 448 x t
    # the others lose at most an E4M3 scale rounding (<= 1/16) plus FP4 clipping to 6
    assert torch.allclose(out[0, [16, 32]], x[0, [16, 32]], rtol=0.07)
    assert torch.all(out[0, 1:16] == 0) and torch.all(out[0, 33:] == 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt,pattern", CONFIGS)
def test_nonfinite_rows_become_nan_rows(bad, fmt, pattern):
    x = torch.randn(3, 128).bfloat16()
    x[1, 5] = bad
    out = R.sharq_activation(x, fmt, pattern)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    y = R.sharq_linear(x, torch.randn(16, 128).bfloat16(), None, fmt, pattern)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


@given(
    st.sampled_from(CONFIGS),
    st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.floats(-20, 15),
)
def test_any_scale_stays_finite_and_bounded(cfg, dtype, rows, kblocks, log2_scale):
    fmt, pattern = cfg
    limit = 6e4 if dtype == torch.float16 else 1e30
    x = (torch.distributions.StudentT(torch.tensor(2.0)).sample((rows, 64 * kblocks)) * 2.0**log2_scale)
    x = x.clamp(-limit, limit).to(dtype)
    out = R.sharq_activation(x, fmt, pattern)
    assert torch.isfinite(out).all()
    assert (out.float().abs().amax(-1) <= x.float().abs().amax(-1) * 1.07 + 1e-30).all()
