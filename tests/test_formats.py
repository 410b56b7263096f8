import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharq_vllm.formats import MXFP4, NVFP4, SHARQ_W32, TENSOR_SCALE_DIVISOR, quantize_blocks


def _nvfp4_row(values_block1, fill_block0_amax=2688.0):
    """Row of two 16-blocks whose row amax is 2688, so the tensor scale is exactly 1."""
    row = torch.zeros(32)
    row[0] = fill_block0_amax
    row[16 : 16 + len(values_block1)] = torch.tensor(values_block1)
    return row


def test_nvfp4_hand_computed_block():
    # block amax 12 -> scale 12/6 = 2 (exact E4M3) -> values / 2 = 6, 2.5, 1.5, .5, .25, -3.5
    row = _nvfp4_row([12.0, 5.0, 3.0, 1.0, 0.5, -7.0])
    q = quantize_blocks(row, NVFP4)
    assert q.tensor_scale.item() == 1.0
    assert q.block_scales.float().tolist() == [448.0, 2.0]
    codes = q.unpacked_codes()[16:22].tolist()
    assert codes == [7, 4, 3, 1, 0, 8 | 6]
    assert q.dequantize()[16:22].tolist() == [12.0, 4.0, 3.0, 1.0, 0.0, -8.0]
    assert q.dequantize()[0].item() == 2688.0


def test_nvfp4_subnormal_block_scale():
    # block amax 6 * 2^-9 -> scale 2^-9 (smallest E4M3 subnormal), value exactly representable
    row = _nvfp4_row([6 * 2.0**-9, -3 * 2.0**-9])
    q = quantize_blocks(row, NVFP4)
    assert q.block_scales[1].float().item() == 2.0**-9
    assert q.dequantize()[16:18].tolist() == [6 * 2.0**-9, -3 * 2.0**-9]


def test_nvfp4_block_below_e4m3_range_flushes_to_zero():
    row = _nvfp4_row([1e-6, -2e-6])
    q = quantize_blocks(row, NVFP4)
    assert q.block_scales[1].float().item() == 0.0
    assert torch.all(q.dequantize()[16:] == 0)


def test_nvfp4_zero_row():
    q = quantize_blocks(torch.zeros(2, 16), NVFP4)
    assert torch.all(q.tensor_scale == 0) and torch.all(q.dequantize() == 0)
    assert torch.all(q.codes == 0)


def test_nvfp4_tensor_scale_formula():
    x = torch.randn(3, 64)
    q = quantize_blocks(x, NVFP4)
    assert torch.equal(q.tensor_scale, x.abs().amax(-1, keepdim=True) / TENSOR_SCALE_DIVISOR)


def test_mxfp4_hand_computed():
    # block amaxes 6, 7, 8, 0: exponents floor(log2) - 2 = 0, 0, 1, -127 (zero block)
    x = torch.zeros(128)
    x[0], x[1] = 6.0, -1.5
    x[32] = 7.0  # OCP rule clips: 7 -> 6
    x[64], x[65] = 8.0, 0.5
    q = quantize_blocks(x, MXFP4)
    assert q.block_scales.tolist() == [127, 127, 128, 0]
    deq = q.dequantize()
    assert deq[0].item() == 6.0 and deq[1].item() == -1.5
    assert deq[32].item() == 6.0
    assert deq[64].item() == 8.0 and deq[65].item() == 0.0  # 0.5 / 2 = 0.25 -> tie -> 0
    assert q.tensor_scale is None


@pytest.mark.parametrize("fmt", [NVFP4, MXFP4, SHARQ_W32])
def test_block_error_bound(fmt):
    # |x - deQ(Q(x))| <= d (the widest E2M1 gap, 4 -> 6, is 2 steps of d) + saturation slack
    x = torch.distributions.StudentT(torch.tensor(3.0)).sample((8, 256))
    q = quantize_blocks(x, fmt)
    d = q.decode_scales().repeat_interleave(fmt.block, -1)
    # E8M0's OCP rule clips block maxima in [6, 8) scale steps to 6: up to 2 steps lost
    slack = 1.0 * d if fmt is MXFP4 else 0.4 * d
    assert torch.all((q.dequantize() - x).abs() <= d + slack + 1e-30)


@given(st.sampled_from([NVFP4, MXFP4, SHARQ_W32]), st.integers(1, 4), st.integers(1, 4),
       st.floats(1e-3, 1e3))
def test_quantize_is_idempotent(fmt, rows, nblocks, scale):
    x = torch.randn(rows, nblocks * fmt.block) * scale
    once = quantize_blocks(x, fmt).dequantize()
    twice = quantize_blocks(once, fmt).dequantize()
    if fmt is MXFP4:  # power-of-two scales: exact
        assert torch.equal(once, twice)
    else:  # the FP32 tensor scale amax/2688 re-rounds: equal up to FP32 rounding
        torch.testing.assert_close(twice, once, rtol=1e-6, atol=0)


def test_rejects_bad_multiple():
    with pytest.raises(ValueError, match="multiple of the block size 16"):
        quantize_blocks(torch.zeros(2, 24), NVFP4)
