"""GPU: hostile activations through the kernels (issue 6 item 1), the same cases as
tests/test_edge_cases.py for the reference: the preparation kernel must give the reference's
bits (x_hat, codes, scales, tensor scales; outputs poisoned first) and the full SharQ linear
must match the reference linear; plus hypothesis properties over random shapes, dtypes and
scales. Policy (docs/NUMERICS.md): a row with NaN/Inf gives a NaN output row, never numbers."""

from __future__ import annotations

import pytest
import torch
from gpu_util import DTYPES, FMTS, GPU_MARKS, bits, fresh_gen, heavy, require_kernels
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharq_vllm import ops, reference

pytestmark = GPU_MARKS

E2M1_MAX, E4M3_MAX = 6.0, 448.0


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    require_kernels()


def hostile(k: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Named single rows (CPU, float32 before the cast to ``dtype``)."""
    g = fresh_gen()
    base = torch.randn(k, generator=g)
    big = 6e4 if dtype == torch.float16 else 1e4  # the largest outlier the dtype carries (fp16 max 65504)
    tiny = 2.0 ** -20 if dtype == torch.float16 else 2.0 ** -120  # subnormal range of each dtype
    rows = {
        "zeros": torch.zeros(k),
        "one_outlier_1e4": base.clone().index_fill_(0, torch.tensor([k // 3]), 1e4),
        "one_outlier_max": base.clone().index_fill_(0, torch.tensor([k - 1]), big),
        "negative_outlier": base.clone().index_fill_(0, torch.tensor([0]), -big),
        "constant": torch.full((k,), 3.0),
        "constant_negative": torch.full((k,), -0.7),
        "subnormal": base * tiny,
        "fp4_saturation": torch.full((k,), E2M1_MAX) * torch.where(base > 0, 1.0, -1.0),
        "e4m3_saturation": base.sign() * E4M3_MAX * E2M1_MAX,
        "ties": torch.arange(k).remainder(8).float() * 0.25,  # many equal magnitudes
        "single_nonzero": torch.zeros(k).index_fill_(0, torch.tensor([k // 2]), 1.5),
        "nan": base.clone().index_fill_(0, torch.tensor([5]), float("nan")),
        "inf": base.clone().index_fill_(0, torch.tensor([7]), float("inf")),
        "neg_inf": base.clone().index_fill_(0, torch.tensor([k - 2]), float("-inf")),
    }
    return {name: r.to(dtype) for name, r in rows.items()}


def _check_prep(x: torch.Tensor, fmt: str, pattern: str) -> None:
    got = torch.ops.sharq.prepare(x, fmt, pattern).cpu()
    ref = ops._prepare_debug_reference(x.cpu(), fmt, pattern)[0]
    finite = torch.isfinite(x.cpu().float()).all(-1)
    assert torch.isnan(got[~finite]).all(), "a non-finite row must become a NaN row"
    assert not torch.isnan(got[finite]).any(), "a finite row must stay finite"
    bad = (bits(got[finite]) != bits(ref[finite])).sum().item()
    assert bad == 0, f"x_hat: {bad} elements differ from the reference"


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("pattern", ["4:8-pairs", "2:4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_pad", [0, 20, 300])  # hostile rows among m_pad ordinary rows: every dispatch bucket
def test_prep_hostile_rows_bit_exact(fmt, pattern, dtype, m_pad):
    k = 1024
    rows = hostile(k, dtype)
    x = torch.cat([torch.stack(list(rows.values())), heavy(m_pad, k, dtype, device="cpu")]).cuda()
    _check_prep(x, fmt, pattern)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_pad", [0, 100])
def test_linear_hostile_rows_match_reference(fmt, dtype, m_pad):
    n, k = 256, 1024
    w = heavy(n, k, torch.float32, outliers=2, scale=8.0, device="cpu")
    payload = reference.quantize_weight(w, block=32)  # CPU payload: the reference's input
    packed = ops.pack_weight(payload, "cuda")
    rows = hostile(k, dtype)
    x = torch.cat([torch.stack(list(rows.values())), heavy(m_pad, k, dtype, device="cpu")]).cuda()
    y = ops.sharq_linear(x, packed, None, fmt, "4:8-pairs").float().cpu()
    ref = reference.apply_linear(x.cpu(), payload, None, fmt, "4:8-pairs").float()
    finite = torch.isfinite(x.cpu().float()).all(-1)
    assert torch.isnan(y[~finite]).all(), "NaN/Inf input rows must give NaN output rows"
    yf, rf = y[finite], ref[finite]
    # fp16 outputs of the saturated rows overflow to +-inf, as the 16-bit layer's would: the
    # kernel must overflow exactly where the reference does, with the same sign
    assert torch.equal(torch.isfinite(yf), torch.isfinite(rf))
    assert torch.equal(torch.sign(yf[~torch.isfinite(yf)]), torch.sign(rf[~torch.isfinite(rf)]))
    yf, rf = yf.nan_to_num(posinf=0.0, neginf=0.0), rf.nan_to_num(posinf=0.0, neginf=0.0)
    # same x_hat (bit-exact above), same weights; only the FP32 sum order differs
    scale = rf.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    assert ((yf - rf).abs() / scale).max().item() < 1e-2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 300),
    k_blocks=st.integers(1, 48),  # K = 64 * k_blocks: every format/pattern block divides it
    dtype=st.sampled_from(DTYPES),
    fmt=st.sampled_from(FMTS),
    pattern=st.sampled_from(["4:8-pairs", "2:4", "dense"]),
    log_scale=st.floats(-12.0, 4.0),
    outlier=st.floats(1.0, 1000.0),
)
def test_prep_property_random_shapes_dtypes_scales(m, k_blocks, dtype, fmt, pattern, log_scale, outlier):
    k = 64 * k_blocks
    x = heavy(m, k, torch.float32, outliers=1, scale=outlier, device="cpu") * (10.0 ** log_scale)
    x = x.to(dtype)
    _check_prep(x.cuda(), fmt, pattern)
