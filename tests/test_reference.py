import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharq_vllm import reference as R
from sharq_vllm.formats import NVFP4, quantize_blocks
from tests.conftest import heavy_tailed

PATTERNS = ["2:4", "4:8-pairs", "dense"]
FORMATS = ["nvfp4", "mxfp4"]


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_decomposition_identity(fmt, pattern):
    x = heavy_tailed(16, 256)
    p = R.prepare_activation(x, fmt, pattern)
    backbone = p.backbone.dequantize()
    # the backbone lives only on the mask, so dropped values are entirely in the residual
    assert torch.all(backbone[~p.mask] == 0)
    residual_input = x - backbone
    # x == deQ(backbone) + residual, exactly in FP32 (Sterbenz: each backbone value is within
    # a factor of 2 of its input or 0), before the residual's own rounding
    assert torch.equal(backbone + residual_input, x)
    assert torch.equal(residual_input[~p.mask], x[~p.mask])
    # the residual payload is exactly the dense quantization of that residual
    expected = quantize_blocks(residual_input, p.residual.fmt).dequantize()
    assert torch.equal(p.residual.dequantize(), expected)
    assert torch.equal(p.x_hat, (backbone + expected).to(x.dtype))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_elementwise_error_bound(fmt, pattern):
    # after the residual, each value is off by at most the residual's quantization error:
    # <= 1.5 residual steps for NVFP4 (E2M1 gap + E4M3 scale rounding), 2 for MXFP4 (OCP
    # clipping of block maxima in [6, 8) steps), plus one bf16 rounding
    x = heavy_tailed(8, 512).bfloat16()
    p = R.prepare_activation(x, fmt, pattern)
    d = p.residual.decode_scales().repeat_interleave(p.residual.block, -1)
    steps = 2.0 if fmt == "mxfp4" else 1.5
    err = (p.x_hat.float() - x.float()).abs()
    assert torch.all(err <= steps * d + 2.0**-8 * p.x_hat.float().abs() + 1e-30)


def test_backbone_block_geometry():
    x = heavy_tailed(2, 128)
    assert R.prepare_activation(x, "nvfp4", "2:4").backbone.block_scales.shape == (2, 4)
    assert R.prepare_activation(x, "nvfp4", "2:4").residual.block_scales.shape == (2, 8)
    assert R.prepare_activation(x, "mxfp4", "4:8-pairs").backbone.block_scales.shape == (2, 2)
    assert R.prepare_activation(x, "mxfp4", "dense").backbone.block_scales.shape == (2, 4)


@pytest.mark.parametrize("pattern", ["2:4", "4:8-pairs"])
def test_sharq_beats_plain_fp4_on_outliers(pattern):
    """The method's point: channel outliers crush plain NVFP4 blocks; SharQ recovers most of it."""
    torch.manual_seed(1)
    x = heavy_tailed(256, 4096, outlier_channels=8).bfloat16()
    nvfp4 = rel_err(R.fake_quantize(x, "nvfp4"), x)
    mxfp4 = rel_err(R.fake_quantize(x, "mxfp4"), x)
    sharq = rel_err(R.sharq_activation(x, "nvfp4", pattern), x)
    sharq_mx = rel_err(R.sharq_activation(x, "mxfp4", pattern), x)
    assert sharq < 0.4 * nvfp4, (sharq, nvfp4)
    assert sharq_mx < 0.5 * mxfp4, (sharq_mx, mxfp4)
    assert mxfp4 > nvfp4  # E8M0 scales are coarser than E4M3 ones


@given(
    st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    st.sampled_from(FORMATS),
    st.sampled_from(PATTERNS),
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 3),
    st.floats(1e-3, 1e3),
)
def test_batched_and_dtypes(dtype, fmt, pattern, lead, kblocks, scale):
    k = 64 * kblocks
    x = (heavy_tailed(*lead, 2, k) * scale).clamp(-6e4, 6e4).to(dtype)  # finite in fp16
    out = R.sharq_activation(x, fmt, pattern)
    assert out.dtype == dtype and out.shape == x.shape
    flat = R.sharq_activation(x.reshape(-1, k), fmt, pattern)
    assert torch.equal(out.reshape(-1, k), flat)
    # rows are independent (per-token scales): one row alone gives the same result
    assert torch.equal(R.sharq_activation(x.reshape(-1, k)[:1], fmt, pattern), flat[:1])
    assert rel_err(out, x) < 0.1


def test_16bit_inputs_match_fp32_math():
    x = heavy_tailed(4, 128).bfloat16()
    assert torch.equal(
        R.sharq_activation(x, "nvfp4", "2:4"),
        R.sharq_activation(x.float(), "nvfp4", "2:4").bfloat16(),
    )


def test_per_tensor_scale_option():
    x = heavy_tailed(4, 128)
    p = R.prepare_activation(x, "nvfp4", "2:4", act_scale="tensor")
    assert p.backbone.tensor_scale.numel() == 1
    assert rel_err(p.x_hat, x) < 0.1


def test_zero_rows_and_nonfinite_rows():
    x = heavy_tailed(4, 64)
    x[1] = 0
    x[2, 5] = float("nan")
    x[3, 7] = float("inf")
    out = R.sharq_activation(x, "nvfp4", "4:8-pairs")
    assert torch.all(out[1] == 0)
    assert torch.all(torch.isnan(out[2])) and torch.all(torch.isnan(out[3]))
    assert torch.equal(out[0], R.sharq_activation(x[:1], "nvfp4", "4:8-pairs")[0])
    fq = R.fake_quantize(x, "nvfp4")
    assert torch.all(torch.isnan(fq[2])) and torch.all(fq[1] == 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        R.sharq_activation(x, check_finite_values=True)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"dtype torch\.int32"):
        R.sharq_activation(torch.zeros(2, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="last dim 48, which is not a multiple of the block size 32"):
        R.sharq_activation(torch.zeros(2, 48), "nvfp4", "2:4")
    with pytest.raises(ValueError, match="multiple of the block size 64"):
        R.sharq_activation(torch.zeros(2, 96), "mxfp4", "2:4")
    with pytest.raises(ValueError, match="unknown FP4 format 'fp4'"):
        R.sharq_activation(torch.zeros(2, 64), "fp4")
    with pytest.raises(ValueError, match="unknown N:M pattern"):
        R.sharq_activation(torch.zeros(2, 64), "nvfp4", "1:2")
    with pytest.raises(ValueError, match="act_scale"):
        R.sharq_activation(torch.zeros(2, 64), act_scale="row")
    with pytest.raises(ValueError, match="weight must be 2-D"):
        R.quantize_weight(torch.zeros(64))
    with pytest.raises(ValueError, match="weight contains NaN"):
        R.quantize_weight(torch.full((2, 32), float("nan")))
    with pytest.raises(ValueError, match="weight block"):
        R.quantize_weight(torch.zeros(2, 64), block=64)


def test_weight_payload_layout():
    w = torch.randn(48, 128)
    p = R.quantize_weight(w)
    assert p.codes.shape == (48, 64) and p.codes.dtype == torch.uint8
    assert p.block_scales.shape == (48, 4) and p.block_scales.dtype == torch.float8_e4m3fn
    assert p.tensor_scale.shape == (1,)
    assert p.tensor_scale.item() == pytest.approx(w.abs().max().item() / 2688, rel=1e-6)
    view = R.dense_view_scales(p)
    assert view.shape == (48, 8) and torch.equal(view[:, ::2], p.block_scales)
    # the dense 16-block view reads the same values
    dense = quantize_blocks(w, NVFP4, amax=w.abs().amax().reshape(1, 1))
    assert dense.block_scales.shape == view.shape
    assert rel_err(R.dequantize_weight(p), w) < 0.15


def test_weight_tensor_amax_makes_shards_consistent():
    """A TP shard quantized with the global amax is exactly a slice of the full payload."""
    w = torch.randn(64, 256)
    full = R.quantize_weight(w)
    amax = w.abs().amax()
    rows = R.quantize_weight(w[32:], tensor_amax=amax)
    cols = R.quantize_weight(w[:, 128:], tensor_amax=amax)
    assert torch.equal(rows.codes, full.codes[32:]) and torch.equal(rows.block_scales, full.block_scales[32:])
    assert torch.equal(cols.codes, full.codes[:, 64:]) and torch.equal(cols.block_scales, full.block_scales[:, 4:])


def test_weight_scale_search_never_worse_per_block():
    w = torch.distributions.StudentT(torch.tensor(4.0)).sample((64, 256))
    for block in (16, 32):
        rtn = R.dequantize_weight(R.quantize_weight(w, block, "rtn"))
        srch = R.dequantize_weight(R.quantize_weight(w, block, "search"))
        e_rtn = (rtn - w).square().reshape(64, -1, block).sum(-1)
        e_srch = (srch - w).square().reshape(64, -1, block).sum(-1)
        assert torch.all(e_srch <= e_rtn)
        assert e_srch.sum() < 0.97 * e_rtn.sum()
    w16 = R.dequantize_weight(R.quantize_weight(w, 16))
    w32 = R.dequantize_weight(R.quantize_weight(w, 32))
    assert rel_err(w16, w) < rel_err(w32, w)


E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _nearest(grid: list[float], v: float) -> float:
    """The grid value nearest to v; ties to the even index (RNE on these code grids)."""
    return min(grid, key=lambda g: (abs(g - v), grid.index(g) % 2))


def _scalar_block_search_up(block: list[float], t: float, steps: int) -> tuple[float, float]:
    """search-up written out per value in plain Python (independent of sharq_vllm.formats):
    from the RTN scale (the E4M3 value nearest to amax / (6 t)) and the next ``steps`` values
    up, each value goes to the nearest E2M1 magnitude (ties to the even code); the least total
    squared error wins, ties to the larger scale. Returns (scale, error)."""
    import numpy as np

    e4m3 = [float(v) for v in torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()]
    t32 = np.float32(t)
    amax = max(abs(v) for v in block)
    first = e4m3.index(_nearest(e4m3, float(np.float32(amax) / (t32 * np.float32(6.0)))))
    best = (float("inf"), 0.0)
    for s in reversed(e4m3[first : first + steps + 1]):
        d = np.float32(s) * t32
        inv = np.float32(1.0) / d
        err = 0.0
        for v in block:
            q = _nearest(E2M1_GRID, abs(float(np.float32(v) * inv)))
            err += (np.sign(v) * q * float(d) - v) ** 2
        if err < best[0]:
            best = (err, s)
    return best[1], best[0]


def test_weight_search_up_matches_a_scalar_search():
    torch.manual_seed(11)
    w = heavy_tailed(8, 64)
    w[0, :16] = 0.0  # an all-zero block keeps scale 0
    w[1, 3] = 40.0  # an outlier block
    payload = R.quantize_weight(w, 16, "search-up")
    t = float(payload.tensor_scale)
    deq = R.dequantize_weight(payload).reshape(8, -1, 16)
    blocks = w.reshape(8, -1, 16)
    scales = payload.block_scales.float()
    assert scales[0, 0] == 0 and torch.all(deq[0, 0] == 0)
    for r in range(8):
        for b in range(blocks.shape[1]):
            if r == 0 and b == 0:
                continue
            s, err = _scalar_block_search_up(blocks[r, b].tolist(), t, steps=6)
            assert scales[r, b].item() == s, (r, b)
            got = (deq[r, b].double() - blocks[r, b].double()).square().sum().item()
            assert got == pytest.approx(err, rel=1e-6)


def test_weight_search_up_lowers_block_error_and_never_shrinks_the_scale():
    torch.manual_seed(5)
    w = torch.distributions.StudentT(torch.tensor(4.0)).sample((64, 256))
    q = {k: R.quantize_weight(w, 16, k) for k in ("rtn", "search-up", "search")}
    deq = {k: R.dequantize_weight(v) for k, v in q.items()}
    blocks = w.reshape(64, -1, 16)
    e = {k: (v - w).square().reshape(64, -1, 16).sum(-1) for k, v in deq.items()}
    # per block never worse than RTN (RTN's code is a candidate)
    assert torch.all(e["search-up"] <= e["rtn"])
    assert e["search-up"].sum() < 0.99 * e["rtn"].sum()
    assert torch.all(q["search-up"].block_scales.float() >= q["rtn"].block_scales.float())
    pos = blocks.abs().argmax(-1, keepdim=True)
    top = {k: (v.reshape(64, -1, 16).gather(-1, pos) - blocks.gather(-1, pos)).abs().mean().item()
           for k, v in deq.items()}
    assert top["search-up"] < top["search"]


@pytest.mark.parametrize("fmt,pattern", [("nvfp4", "4:8-pairs"), ("nvfp4", "2:4"), ("mxfp4", "2:4")])
def test_sharq_linear_matches_its_definition(fmt, pattern):
    x = heavy_tailed(5, 128).bfloat16()
    w = torch.randn(40, 128).bfloat16()
    b = torch.randn(40).bfloat16()
    y = R.sharq_linear(x, w, b, fmt, pattern)
    x_hat = R.sharq_activation(x, fmt, pattern).float()
    w_hat = R.dequantize_weight(R.quantize_weight(w))
    expected = (x_hat @ w_hat.T + b.float()).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    exact = x.float() @ w.float().T + b.float()
    assert rel_err(y, exact) < 0.2
    assert rel_err(R.sharq_weight(w), w) < 0.15
