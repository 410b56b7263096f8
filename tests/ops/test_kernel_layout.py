"""CPU checks of the kernels' weight layout and fragment math (no GPU needed).

``emulate_gemm`` replays the GEMM kernels' decode step by step in PyTorch (csrc/fp4_tile.cuh,
used by gemm_decode.cu and gemm_wgmma.cu): it reads each lane's tiled words and scale codes
exactly as the lane does, applies the same bit tricks (nibble -> bf16/fp16 pair, scale code ->
{s, s} pair by one integer multiply-add), rounds every product to the MMA dtype as the HMUL2
does, places each value at the (row, k) its A-fragment register feeds, and multiplies by x in
natural k order. If the tiling, the nibble order, the scale-code addressing or the k order were
inconsistent with each other, this would not match the reference.
"""

from __future__ import annotations

import pytest
import torch

from sharq_vllm import ops
from sharq_vllm.kernels import layout
from sharq_vllm.reference import dequantize_weight, quantize_weight

MASK32 = 0xFFFFFFFF


def _heavy(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # StudentT samples from the global generator: seed it here
        torch.manual_seed(seed)
        t = torch.distributions.StudentT(torch.tensor(3.0)).sample(shape)
    idx = torch.randperm(shape[-1], generator=g)[:3]
    t[..., idx] *= 50.0
    return t


def _half_to_float(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    h = h & 0xFFFF
    h = torch.where(h >= 0x8000, h - 0x10000, h).to(torch.int16)
    return h.view(dtype).float()


def _extract(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """MmaT<T>::extract on int64-held uint32 words -> (low, high) decoded values."""
    t = t & MASK32
    if dtype == torch.bfloat16:
        bits = (t & 0x80008000) | ((t >> 6) & 0x01C001C0)
    else:
        bits = (t & 0x80008000) | ((t >> 3) & 0x0E000E00)
    return _half_to_float(bits, dtype), _half_to_float(bits >> 16, dtype)


def _scale_pair(code: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MmaT<T>::scale2 of a {code, 0, code, 0} word: one half of the {s, s} pair."""
    if dtype == torch.bfloat16:
        return _half_to_float(code * 16 + 0x7600, dtype)
    return _half_to_float(code * 128 + 0x3000, dtype)


def emulate_weight(packed: ops.PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The [N_pad, K] weights the kernels' A fragments hold (value * scale * 2^-8, in dtype)."""
    s_count, kt = packed.n_pad // 16, packed.k // 64
    b = packed.qweight.reshape(s_count, kt, 8, 4, 4, 4).to(torch.int64)  # [S, KT, g, q, j, byte]
    words = (b << torch.tensor([0, 8, 16, 24])).sum(-1)  # [S, KT, g, q, j]
    per_g = 8 if packed.block == 16 else 4
    sc = packed.scales.reshape(s_count, kt, 8, per_g).to(torch.int64)  # [S, KT, g, byte]
    w = torch.zeros(packed.n_pad, packed.k)
    rows_g = torch.arange(s_count).view(s_count, 1, 1) * 16 + torch.arange(8).view(1, 1, 8)
    for j in range(4):
        blk = j if packed.block == 16 else j // 2
        sg, sg8 = _scale_pair(sc[..., 2 * blk], dtype), _scale_pair(sc[..., 2 * blk + 1], dtype)
        for i in range(4):  # register a_i: pair i of word j
            lo, hi = _extract(words[..., j] << (4 * i), dtype)  # [S, KT, g, q]
            scale = sg if i % 2 == 0 else sg8
            r, h = i // 2, i % 2
            for q in range(4):
                for e, val in ((0, lo), (1, hi)):
                    prod = val[..., q] * scale
                    assert torch.equal(prod.to(dtype).float(), prod), "the HMUL2 must be exact"
                    rows = (rows_g + 8 * h).expand(s_count, kt, 8)
                    cols = (torch.arange(kt).view(1, kt, 1) * 64 + 16 * j + 8 * r + 2 * q + e).expand(
                        s_count, kt, 8
                    )
                    w[rows, cols] = prod
    return w


def emulate_gemm(x: torch.Tensor, packed: ops.PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] (fp64) as the kernels compute it: x (natural k) @ W_frag^T * tensor_scale * 2^8."""
    w = emulate_weight(packed, dtype)[: packed.n].double()
    rescale = 2.0 ** (-layout.DEQUANT_EXPONENT)
    return (x.double() @ w.T) * (float(packed.tensor_scale) * rescale)


def _packed(payload, n, k, block) -> ops.PackedWeight:
    q, s, n_pad = layout.tile_weight(payload.codes, payload.block_scales, block)
    return ops.PackedWeight(q, s, payload.tensor_scale, n, n_pad, k, block, ops.LAYOUT_TILED)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k,m", [(48, 128, 3), (40, 192, 5)])
def test_emulated_kernel_matches_reference(dtype, block, n, k, m):
    w = _heavy(n, k, seed=n + k)
    w[3, :32] = 0.0  # an all-zero block (scale 0)
    # a tiny block: its E4M3 scale is subnormal (block amax / tensor amax < 2^-6 / 448)
    w[5, 64:96] = torch.linspace(-1.0, 1.0, 32) * w.abs().max() * 2e-5
    payload = quantize_weight(w, block=block)
    packed = _packed(payload, n, k, block)
    x = _heavy(m, k, seed=1).to(dtype)
    y = emulate_gemm(x, packed, dtype)
    ref = x.double() @ dequantize_weight(payload).double().T
    err = (y - ref).norm() / ref.norm()
    assert err < 1e-6, err
    # subnormal scales really occur in this data
    sb = payload.block_scales.view(torch.uint8)
    assert ((sb & 0x78) == 0).logical_and(sb > 0).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
def test_emulated_weights_are_exact(dtype, block):
    """Every decoded weight is exactly value * scale * 2^-8 (no rounding in the decode)."""
    n, k = 40, 256
    payload = quantize_weight(_heavy(n, k, seed=5), block=block)
    w = emulate_weight(_packed(payload, n, k, block), dtype)[:n]
    exact = dequantize_weight(
        type(payload)(payload.codes, payload.block_scales, torch.ones(1), payload.fmt, block)
    )
    assert torch.equal(w * 2.0 ** (-layout.DEQUANT_EXPONENT), exact)


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k", [(16, 64), (33, 128), (100, 448)])
def test_tile_roundtrip(block, n, k):
    payload = quantize_weight(_heavy(n, k, seed=n), block=block)
    q, s, n_pad = layout.tile_weight(payload.codes, payload.block_scales, block)
    assert n_pad % 16 == 0 and q.dtype == torch.uint8 and s.dtype == torch.uint8
    assert q.numel() == n_pad * k // 2
    assert s.numel() == n_pad * k // block
    codes, scales = layout.untile_weight(q, s, n, k, block)
    assert torch.equal(codes, payload.codes)
    assert torch.equal(scales, payload.block_scales.view(torch.uint8))


def test_scale_codes_cover_every_e4m3_scale():
    """Each non-negative finite E4M3 value maps to a code whose 16-bit forms are exact, and back."""
    values = torch.arange(128, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    for byte in range(1, 127):  # 0 (zero) and 127 (NaN) excluded
        code = int(layout.SCALE_TO_CODE[byte])
        assert int(layout.CODE_TO_SCALE[code]) == byte
        v = float(values[byte])
        assert float(_scale_pair(torch.tensor(code), torch.bfloat16)) == v * 2.0**118
        assert float(_scale_pair(torch.tensor(code), torch.float16)) == v * 2.0**6
