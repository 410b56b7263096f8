"""CPU checks of the kernels' data layout and fragment math (no GPU needed).

``emulate_gemm_mma`` replays sharq_vllm/csrc/gemm.cu's mma.sync kernel step by step in PyTorch: it reads the
tiled weight words exactly as a lane does, applies the same bit tricks (code pair -> bf16/fp16
pair by the rotations of layout.PAIR_ROT), the same scale bias (2^119 / 2^7), assembles the
m16n8k16 A and B fragments with the kernel's k-permutation, and multiplies. If the tiling, the
code bit placement, scale addressing or the
k-permutation were inconsistent, this would not match the reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sharq_vllm import ops
from sharq_vllm.kernels.layout import (
    BF16_TARGET,
    BIT_POS,
    PAIR_DECODE,
    PAIR_ROT,
    tile_weight,
    untile_weight,
    xhat_from_fragments,
    xhat_to_fragments,
)
from sharq_vllm.reference import dequantize_weight, quantize_weight

MASK32 = 0xFFFFFFFF


def _tiled(payload) -> ops.PackedWeight:
    """The payload in the CUDA kernels' tiled layout (pack_weight keeps the canonical one on CPU)."""
    q, s, n_pad = tile_weight(payload.codes, payload.block_scales, payload.block)
    n, k = payload.codes.shape[0], 2 * payload.codes.shape[1]
    ts = payload.tensor_scale
    return ops.PackedWeight(q, s, ts, n, n_pad, k, payload.block, ops.LAYOUT_TILED, float(ts))


def _heavy(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # StudentT samples from the global generator: seed it here
        torch.manual_seed(seed)
        t = torch.distributions.StudentT(torch.tensor(3.0)).sample(shape)
    idx = torch.randperm(shape[-1], generator=g)[:3]
    t[..., idx] *= 50.0
    return t


def _hostile_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """Heavy-tailed [n, k] weights (k >= 96) with an all-zero block (scale 0) in row 3 and a tiny
    block in row 5 whose E4M3 scale is subnormal (block amax / tensor amax < 2^-6 / 448)."""
    w = _heavy(n, k, seed=seed)
    w[3, :32] = 0.0
    w[5, 64:96] = torch.linspace(-1.0, 1.0, 32) * w.abs().max() * 2e-5
    return w


def _rotl(w: torch.Tensor, r: int) -> torch.Tensor:
    return ((w << r) | (w >> (32 - r))) & MASK32 if r else w


def _decode(w: torch.Tensor, p: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's MmaT<T>::pair (gemm_tile.cuh) on int64-held uint32 words -> (low, high) raw
    floats, written from layout.PAIR_ROT: the bits of pair p rotated onto BF16_TARGET."""
    w = w & MASK32
    bits = torch.zeros_like(w)
    for b, target in enumerate(BF16_TARGET):
        mask = (1 << target) | (1 << (target + 16))
        bits |= _rotl(w, PAIR_ROT[p][b]) & mask
    if dtype == torch.float16:  # e1 e0 m0 from bf16 bits 8..6 to fp16 bits 11..9
        bits = (bits & 0x80008000) | ((bits << 3) & 0x0E000E00)
    lo = bits & 0xFFFF
    hi = (bits >> 16) & 0xFFFF

    def to_float(h):
        h = torch.where(h >= 0x8000, h - 0x10000, h).to(torch.int16)
        return h.view(dtype).float()

    return to_float(lo), to_float(hi)


def test_pair_decode_formulas_match_the_rotations():
    """layout.PAIR_DECODE (the CUDA expressions) equals the rotation table on every code pair."""
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 2**32, (4096,), generator=g, dtype=torch.int64)
    for p, formula in enumerate(PAIR_DECODE):
        got = eval(formula, {"w": w, "rotl": _rotl}) & MASK32
        want = torch.zeros_like(w)
        for b, target in enumerate(BF16_TARGET):
            want |= _rotl(w, PAIR_ROT[p][b]) & ((1 << target) | (1 << (target + 16)))
        assert torch.equal(got, want), formula
    # and the CUDA source decodes with exactly these expressions (gemm_tile.cuh, decode_bf16)
    src = (Path(__file__).resolve().parents[2] / "sharq_vllm" / "csrc" / "gemm_tile.cuh").read_text()
    body = src[src.index("uint32_t decode_bf16(") :]
    cases = re.findall(r"(?:case \d|default): return (.*?);", body[: body.index("\n}\n")])
    assert [re.sub(r"(0x[0-9A-F]+)u\b", r"\1", c) for c in cases] == list(PAIR_DECODE)


def _lane_operands(packed: ops.PackedWeight, k: int, dtype: torch.dtype):
    """The tiled words [S, KT, g, q, word] and the lanes' scale pairs s_g, s_g8 [S, KT, g, q] (times
    the MMA dtype's bias 2^119 / 2^7), as a lane of any of the GEMMs reads them."""
    s_count, kt = packed.n_pad // 16, k // 64
    sbt = 32 if packed.block == 32 else 64
    words = packed.qweight.reshape(s_count, kt, 8, 4, 4).to(torch.int64) & MASK32  # [S,KT,g,q,wi]
    sc = packed.scales.reshape(s_count, kt, sbt)
    q_idx = torch.arange(4)
    kb = (q_idx >> 1) if packed.block == 32 else q_idx
    g_idx = torch.arange(8)
    off = kb.view(1, 4) * 16 + 2 * g_idx.view(8, 1)  # [g, q]
    s_g = sc[:, :, off].view(torch.float8_e4m3fn).float()  # [S, KT, g, q]
    s_g8 = sc[:, :, off + 1].view(torch.float8_e4m3fn).float()
    bias_pow = 2.0**119 if dtype == torch.bfloat16 else 2.0**7
    s_g, s_g8 = s_g * bias_pow, s_g8 * bias_pow
    # the scale is rounded to the MMA dtype (exact: <= 4 significant bits, in range)
    assert torch.equal(s_g.to(dtype).float(), s_g) and torch.equal(s_g8.to(dtype).float(), s_g8)
    return words, s_g, s_g8


def _a_fragment(words, s_g, s_g8, j: int, dtype: torch.dtype) -> torch.Tensor:
    """k16 step j's A operand [S, KT, 16 rows, 16 logical k] as the lanes build it (gemm_tile.cuh's
    mma_tile: registers a0..a3 of lane (g, q) = rows g / g + 8 at logical k {2q, 2q+1} / {2q+8, 2q+9});
    the same fragment feeds mma.sync m16n8k16 and, per warp of the warpgroup, a register-source wgmma."""
    s_count, kt = words.shape[:2]
    lo = words[..., (j >> 1) * 2]
    hi = words[..., (j >> 1) * 2 + 1]
    p = 2 * (j & 1)
    a = [_decode(lo, p, dtype), _decode(hi, p, dtype), _decode(lo, p + 1, dtype), _decode(hi, p + 1, dtype)]
    A = torch.zeros(s_count, kt, 16, 16)
    for q in range(4):
        for gg in range(8):
            sg, sg8 = s_g[:, :, gg, q], s_g8[:, :, gg, q]
            A[:, :, gg, 2 * q] = a[0][0][:, :, gg, q] * sg
            A[:, :, gg, 2 * q + 1] = a[0][1][:, :, gg, q] * sg
            A[:, :, gg + 8, 2 * q] = a[1][0][:, :, gg, q] * sg8
            A[:, :, gg + 8, 2 * q + 1] = a[1][1][:, :, gg, q] * sg8
            A[:, :, gg, 2 * q + 8] = a[2][0][:, :, gg, q] * sg
            A[:, :, gg, 2 * q + 9] = a[2][1][:, :, gg, q] * sg
            A[:, :, gg + 8, 2 * q + 8] = a[3][0][:, :, gg, q] * sg8
            A[:, :, gg + 8, 2 * q + 9] = a[3][1][:, :, gg, q] * sg8
    # every A value is exact in the MMA dtype
    assert torch.equal(A.to(dtype).float(), A)
    return A


def emulate_gemm_mma(x: torch.Tensor, packed: ops.PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """x [M, K] (values representable in dtype) -> y [M, N] fp32, as sharq_vllm/csrc/gemm.cu computes it."""
    m, k = x.shape
    kt = k // 64
    words, s_g, s_g8 = _lane_operands(packed, k, dtype)
    xp = x.float()
    y = torch.zeros(m, packed.n_pad)
    for j in range(4):
        A = _a_fragment(words, s_g, s_g8, j, dtype)
        # B fragment [KT, 16 logical k, M]: logical 2q+e <- phys 64t+16q+4j+e, 2q+8+e <- +2+e
        B = torch.zeros(kt, 16, m)
        for q in range(4):
            for e in range(2):
                phys = torch.arange(kt) * 64 + 16 * q + 4 * j + e
                B[:, 2 * q + e, :] = xp[:, phys].T
                B[:, 2 * q + 8 + e, :] = xp[:, phys + 2].T
        C = torch.einsum("stik,tkm->smi", A.double(), B.double())  # [S, M, 16]
        y += C.permute(1, 0, 2).reshape(m, packed.n_pad).float()
    return (y * (packed.tensor_scale.float() * 128.0))[:, : packed.n]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k,m", [(48, 128, 3), (40, 192, 5)])
def test_emulated_mma_kernel_matches_reference(dtype, block, n, k, m):
    payload = quantize_weight(_hostile_weight(n, k, seed=n + k), block=block)
    packed = _tiled(payload)
    x = _heavy(m, k, seed=1).to(dtype)
    y = emulate_gemm_mma(x, packed, dtype)
    ref = x.double() @ dequantize_weight(payload).double().T
    err = (y.double() - ref).norm() / ref.norm()
    assert err < 1e-6, err
    # subnormal scales really occur in this data
    assert (
        (payload.block_scales.view(torch.uint8) & 0x78)
        .eq(0)
        .logical_and(payload.block_scales.view(torch.uint8) > 0)
        .any()
    )


@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k", [(16, 64), (33, 128), (100, 448)])
def test_tile_roundtrip(block, n, k):
    payload = quantize_weight(_heavy(n, k, seed=n), block=block)
    q, s, n_pad = tile_weight(payload.codes, payload.block_scales, block)
    assert n_pad % 16 == 0 and q.dtype == torch.int32 and s.dtype == torch.uint8
    assert q.numel() * 4 == n_pad * k // 2
    assert s.numel() == n_pad * k // block
    codes, scales = untile_weight(q, s, n, k, block)
    assert torch.equal(codes, payload.codes)
    assert torch.equal(scales, payload.block_scales.view(torch.uint8))


def emulate_dequant(packed: ops.PackedWeight) -> torch.Tensor:
    """sharq_vllm/csrc/gemm.cu dequant_kernel: per lane, words -> 16 consecutive k of rows g and g+8."""
    s_count, kt = packed.n_pad // 16, packed.k // 64
    sbt = 32 if packed.block == 32 else 64
    words = packed.qweight.reshape(s_count, kt, 8, 4, 4).to(torch.int64) & MASK32
    sc = packed.scales.reshape(s_count, kt, sbt)
    out = torch.zeros(packed.n_pad, packed.k)
    from sharq_vllm.fp4 import e2m1_decode

    for g in range(8):
        for q in range(4):
            kb = (q >> 1) if packed.block == 32 else q
            for wi in range(4):
                h, half = wi & 1, wi >> 1
                scale = sc[:, :, kb * 16 + 2 * g + h].view(torch.float8_e4m3fn).float()  # [S, KT]
                for c in range(8):
                    code = sum(((words[:, :, g, q, wi] >> BIT_POS[c][b]) & 1) << b for b in range(4))
                    val = e2m1_decode(code.to(torch.uint8)) * scale
                    rows = torch.arange(s_count) * 16 + g + 8 * h
                    cols = torch.arange(kt) * 64 + 16 * q + 8 * half + c
                    out[rows.view(-1, 1), cols.view(1, -1)] = val
    return out[: packed.n]


@pytest.mark.parametrize("block", [32, 16])
def test_emulated_dequant_kernel(block):
    n, k = 40, 128
    payload = quantize_weight(_heavy(n, k, seed=7), block=block)
    packed = _tiled(payload)
    e2m1_s = emulate_dequant(packed)
    # kernel writes e2m1*s (exact in bf16); the tensor scale goes into cuBLAS's alpha
    assert torch.equal(e2m1_s.to(torch.bfloat16).float(), e2m1_s)
    w_hat = e2m1_s * payload.tensor_scale
    ref = dequantize_weight(payload)
    assert torch.allclose(w_hat, ref, rtol=1e-6, atol=0)
    # and through the op layer's own inverse
    assert torch.allclose(ops.dequantize_packed(packed), ref, rtol=0, atol=0)


def emulate_dequant_v2(packed: ops.PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """sharq_vllm/csrc/gemm.cu dequant_kernel (v2): the GEMM's bit trick per word (pair(word, j) ->
    elements 2j, 2j+1), times (s * 2^119 | s * 2^7) times 2^7, staged per warp in a padded
    [16][72] buffer and read back as 4 x (4 rows x 8 lanes x 16 B). Every intermediate is
    checked to be exactly representable in ``dtype``."""
    s_count, kt = packed.n_pad // 16, packed.k // 64
    sbt = 32 if packed.block == 32 else 64
    words = packed.qweight.reshape(s_count, kt, 8, 4, 4).to(torch.int64) & MASK32
    sc = packed.scales.reshape(s_count, kt, sbt)
    bias_pow = 2.0**119 if dtype == torch.bfloat16 else 2.0**7
    out = torch.full((packed.n_pad, packed.k), float("nan"))
    for g in range(8):
        for q in range(4):
            kb = (q >> 1) if packed.block == 32 else q
            for i in range(4):
                h, half = i & 1, i >> 1
                s = sc[:, :, kb * 16 + 2 * g + h].view(torch.float8_e4m3fn).float() * bias_pow
                assert torch.equal(s.to(dtype).float(), s)
                stage = torch.empty(s_count, kt, 8)
                for j in range(4):
                    lo, hi = _decode(words[:, :, g, q, i], j, dtype)
                    for e, raw in ((2 * j, lo), (2 * j + 1, hi)):
                        p1 = raw * s
                        assert torch.equal(p1.to(dtype).float(), p1)
                        stage[:, :, e] = p1 * 128.0
                rows = torch.arange(s_count) * 16 + g + 8 * h
                for e in range(8):
                    cols = torch.arange(kt) * 64 + 16 * q + 8 * half + e
                    out[rows.view(-1, 1), cols.view(1, -1)] = stage[:, :, e]
    # readback mapping: lane -> (row 4r + lane // 8, 16-byte chunk lane % 8) covers the tile once
    seen = sorted((4 * r + ln // 8, ln % 8) for r in range(4) for ln in range(32))
    assert seen == [(row, c) for row in range(16) for c in range(8)]
    assert not torch.isnan(out).any()
    return out[: packed.n]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
def test_emulated_dequant_v2_kernel(dtype, block):
    n, k = 40, 192
    payload = quantize_weight(_heavy(n, k, seed=11), block=block)
    packed = _tiled(payload)
    w = emulate_dequant_v2(packed, dtype)
    assert torch.equal(w.to(dtype).float(), w)  # e2m1 * s exactly representable
    assert torch.allclose(w * payload.tensor_scale, dequantize_weight(payload), rtol=1e-6, atol=0)


def stream_schedule(nstrips: int, kt: int, grid: int, u: int = 4, warps: int = 8):
    """sharq_vllm/csrc/gemm.cu gemm_stream_kernel's work split: per (cta, warp) the flat step sequence
    (load i+1 before compute i, finish after a strip's last step) -> visited (strip, tile)."""
    nsteps = (kt + warps * u - 1) // (warps * u)
    visits, finishes = [], []
    for b in range(grid):
        my = (nstrips - 1 - b) // grid + 1 if nstrips > b else 0
        total = my * nsteps
        for w in range(warps):
            for i in range(total):
                strip = b + (i // nsteps) * grid
                tb = w + warps * u * (i % nsteps)
                for uu in range(u):
                    t = tb + warps * uu
                    if t < kt:
                        visits.append((strip, t))
                if i % nsteps == nsteps - 1 and w == 0:
                    finishes.append(strip)
    return visits, finishes


@pytest.mark.parametrize(
    "nstrips,kt,grid",
    [
        (384, 64, 192),
        (384, 64, 264),
        (256, 224, 256),
        (1792, 64, 256),
        (5, 7, 3),
        (3, 33, 8),
        (7, 1, 2),
    ],
)
def test_stream_schedule_covers_each_tile_once(nstrips, kt, grid):
    grid = max(1, min(nstrips, grid))
    visits, finishes = stream_schedule(nstrips, kt, grid)
    assert sorted(visits) == [(s, t) for s in range(nstrips) for t in range(kt)]
    assert sorted(finishes) == list(range(nstrips))


# ------------------------------------------------------------------------------------------
# gemm_wgmma.cu: the decoder-warp kernel's warps decode the CTA's 16 strips into one swizzled
# 256-row B tile; the token-wide kernel's warps decode their warpgroup's 4 strips into a 64-row A
# tile. The same placement (rows 16 s + g (+8) of a tile of bn rows), mirrored by _wgmma_b_offset
# ------------------------------------------------------------------------------------------
# (the test fails if the source changes)
_WGMMA_OFFSETS = {
    256: "boff[j][i] = (16 * s + g + 8 * (i & 1)) * 128 + (((2 * q + (i >> 1)) ^ g) * 16);",
    64: "aoff[i] = (16 * wi + g + 8 * (i & 1)) * 128 + (((2 * q + (i >> 1)) ^ g) * 16);",
}


def _wgmma_b_offset(s: int, g: int, q: int, i: int) -> int:
    return (16 * s + g + 8 * (i & 1)) * 128 + (((2 * q + (i >> 1)) ^ g) * 16)


def _sw128_offset(r: int, k: int) -> int:
    """Byte offset of element (row r, k) of a 64-value-wide 16-bit K-major tile stored with the
    128-byte swizzle, as wgmma reads it through async::desc_sw128 (and TMA writes x_hat boxes)."""
    return r * 128 + (((k // 8) ^ (r % 8)) * 16) + (k % 8) * 2


def emulate_gemm_wgmma(x: torch.Tensor, packed: ops.PackedWeight, dtype: torch.dtype, bn: int) -> torch.Tensor:
    """sharq_vllm/csrc/gemm_wgmma.cu's math: for k-tile t, lane (g, q) of the decoder warp owning
    strip s (s-th of its CTA's bn / 16) decodes its own four words (word i: row g + 8 (i & 1), k
    16q + 8 (i >> 1) .. +7; code pair p -> k + 2p, 2p + 1), scales them by its row's block scale
    and stores 16 bytes a word at boff of the CTA's bn x 64 B tile; the MMA reads that tile as
    the 128-byte-swizzled K-major layout and multiplies x (in natural k order) with it."""
    src = (Path(__file__).resolve().parents[2] / "sharq_vllm" / "csrc" / "gemm_wgmma.cu").read_text()
    assert _WGMMA_OFFSETS[bn] in src, "gemm_wgmma.cu places the decoded words otherwise"
    k = x.shape[1]
    s_count, kt = packed.n_pad // 16, k // 64
    sbt = 32 if packed.block == 32 else 64
    words = packed.qweight.reshape(s_count, kt, 8, 4, 4).to(torch.int64) & MASK32  # [S,KT,g,q,word]
    sc = packed.scales.reshape(s_count, kt, sbt)
    bias_pow = 2.0**119 if dtype == torch.bfloat16 else 2.0**7
    per_cta = bn // 16
    n_cta = (s_count + per_cta - 1) // per_cta
    # the CTAs' B tiles as 16-bit element images: [CTA, KT, 256 * 64] (offset / 2); strips past
    # N arrive as zeros
    image = torch.full((n_cta, kt, bn * 64), float("nan"))
    for cta in range(n_cta):
        image[cta, :, (s_count - cta * per_cta) * 16 * 64 :] = 0.0
    for strip in range(s_count):
        cta, s = divmod(strip, per_cta)
        for g in range(8):
            for q in range(4):
                kb = q >> 1 if packed.block == 32 else q
                s_g = sc[strip, :, kb * 16 + 2 * g].view(torch.float8_e4m3fn).float() * bias_pow
                s_g8 = sc[strip, :, kb * 16 + 2 * g + 1].view(torch.float8_e4m3fn).float() * bias_pow
                for i in range(4):
                    base = _wgmma_b_offset(s, g, q, i) // 2
                    for pr in range(4):
                        lo, hi = _decode(words[strip, :, g, q, i], pr, dtype)
                        scale = s_g8 if i & 1 else s_g
                        image[cta, :, base + 2 * pr] = lo * scale
                        image[cta, :, base + 2 * pr + 1] = hi * scale
    # what the MMA reads: B[row, k] of each k-tile through the swizzled layout
    idx = torch.tensor([_sw128_offset(r, c) // 2 for r in range(bn) for c in range(64)])
    B = image[:, :, idx].reshape(n_cta, kt, bn, 64)  # [CTA, KT, row, k]
    B = B.permute(0, 2, 1, 3).reshape(n_cta * bn, kt * 64)
    assert not B.isnan().any(), "a weight the MMA reads was never written"
    B = B[: packed.n_pad]
    assert torch.equal(B.to(dtype).float(), B)  # every B value exact in the MMA dtype
    y = x.double() @ B.double().T
    return (y * (packed.tensor_scale.double() * 128.0))[:, : packed.n].float()


def test_sw128_offsets_are_a_permutation_of_16_byte_chunks():
    """Within each 128-byte row the swizzle permutes the 8 chunks; elements stay in order inside a chunk."""
    for r in range(256):
        offs = sorted(_sw128_offset(r, c) for c in range(64))
        assert offs == list(range(r * 128, r * 128 + 128, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k,m,bn", [(48, 128, 3, 256), (40, 192, 5, 64), (272, 128, 4, 256), (144, 128, 7, 64)])
def test_emulated_wgmma_kernel_matches_reference(dtype, block, n, k, m, bn):
    err = _emulation_error(emulate_gemm_wgmma, bn, dtype, block, n, k, m, seeds=(n + k + 1, 2))
    assert err < 1e-6, err


def _emulation_error(emulate, tiling: int, dtype, block, n, k, m, seeds) -> float:
    """Relative error of a kernel emulation (emulate(x, packed, dtype, tiling)) against the FP64
    product of x and the dequantized hostile weight."""
    payload = quantize_weight(_hostile_weight(n, k, seed=seeds[0]), block=block)
    x = _heavy(m, k, seed=seeds[1]).to(dtype)
    y = emulate(x, _tiled(payload), dtype, tiling)
    ref = x.double() @ dequantize_weight(payload).double().T
    return float((y.double() - ref).norm() / ref.norm())


# gemm_wgmma_rs.cu's x_hat staging and B descriptor, as written there (the emulation below replays
# exactly these expressions)
_RS_STAGING = "(4 * (i & 1) + r) * C::kBlock"
_RS_BASE = "tl * C::kXTile + (m >> 3) * 128 + (m & 7) * 16 + (i >> 1) * 4"
_RS_DESC = "async::desc_interleave(xb + 2 * j * C::kBlock, C::kBlock, 128)"


def emulate_gemm_wgmma_rs(x: torch.Tensor, packed: ops.PackedWeight, dtype: torch.dtype, nt: int) -> torch.Tensor:
    """sharq_vllm/csrc/gemm_wgmma_rs.cu's math: the staging threads copy x_hat's k-tile t (rows
    m < nt, rows >= M as zeros) into a [8 blocks][nt / 8][8][16 B] image, the 16-byte load i of a row
    scattering its pair r to block 4 (i & 1) + r at 4-byte position i >> 1; wgmma reads k16 step j's
    B[16 logical k][nt] through a no-swizzle K-major descriptor (core matrix (token group b, k half
    c) at block 2j start + b * SBO + c * LBO, LBO = the block, SBO = 128 bytes; row n % 8 at 16
    bytes, logical k % 8 at 2 bytes) and multiplies it by the lanes' register A fragment."""
    src = (Path(__file__).resolve().parents[2] / "sharq_vllm" / "csrc" / "gemm_wgmma_rs.cu").read_text()
    for expr in (_RS_STAGING, _RS_BASE, _RS_DESC):
        assert expr in src, f"gemm_wgmma_rs.cu no longer has: {expr}"
    m, k = x.shape
    kt = k // 64
    block, tile = nt * 16, nt * 128  # bytes: RsCfg::kBlock, RsCfg::kXTile
    words, s_g, s_g8 = _lane_operands(packed, k, dtype)
    # the staged image as 16-bit elements (byte offset / 2), one k-tile after the other
    image = torch.full((kt * tile // 2,), float("nan"))
    xp = torch.zeros(nt, k)
    xp[:m] = x.float()
    for tl in range(kt):
        for mm in range(nt):
            for i in range(8):
                base = tl * tile + (mm >> 3) * 128 + (mm & 7) * 16 + (i >> 1) * 4
                for r in range(4):
                    off = (base + (4 * (i & 1) + r) * block) // 2
                    kk = 64 * tl + 8 * i + 2 * r
                    image[off : off + 2] = xp[mm, kk : kk + 2]
    y = torch.zeros(nt, packed.n_pad, dtype=torch.float64)
    for j in range(4):
        A = _a_fragment(words, s_g, s_g8, j, dtype)  # [S, KT, 16 rows, 16 logical k]
        # B[KT, 16 logical k, nt] through the descriptor
        B = torch.empty(kt, 16, nt)
        for tl in range(kt):
            start = tl * tile + 2 * j * block
            for lk in range(16):
                for n in range(nt):
                    byte = start + (n // 8) * 128 + (lk // 8) * block + (n % 8) * 16 + (lk % 8) * 2
                    B[tl, lk, n] = image[byte // 2]
        assert not B.isnan().any(), "wgmma would read an x_hat value never staged"
        y += torch.einsum("stik,tkn->nsi", A.double(), B.double()).reshape(nt, packed.n_pad)
    return (y[:m] * (packed.tensor_scale.double() * 128.0))[:, : packed.n].float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("n,k,m,nt", [(48, 128, 3, 16), (40, 192, 17, 32), (64, 128, 33, 64)])
def test_emulated_wgmma_rs_kernel_matches_reference(dtype, block, n, k, m, nt):
    err = _emulation_error(emulate_gemm_wgmma_rs, nt, dtype, block, n, k, m, seeds=(n + k + 3, 4))
    assert err < 1e-6, err


def test_wgmma_header_is_generated():
    """sharq_vllm/csrc/wgmma_ops.cuh is tools/gen_wgmma.py's output (edit the generator, not the file)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / "gen_wgmma.py"
    spec = importlib.util.spec_from_file_location("gen_wgmma", path)
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.HEADER.read_text() == gen.render(), "run: python3 tools/gen_wgmma.py"


# ---- x_hat in fragment order (layout.xhat_to_fragments) -----------------------------------
# The two address formulas of sharq_vllm/csrc: the preparation's store of row r's 8-value chunk
# gc (prep.cu) and the stream GEMM's loads of lane (g, q), tile t, row group G (gemm.cu, XF),
# replayed on the layout function's output.
def _prep_frag_offset(r: int, gc: int, k: int) -> int:
    return (r >> 3) * 8 * k + (gc >> 3) * 512 + (gc & 1) * 256 + (r & 7) * 32 + ((gc >> 1) & 3) * 8


def _stream_frag_loads(flat: torch.Tensor, grp: int, t: int, g: int, q: int, k: int) -> torch.Tensor:
    base = grp * 8 * k + 512 * t + 32 * g + 8 * q
    return torch.cat([flat[base : base + 8], flat[base + 256 : base + 264]])


@pytest.mark.parametrize("m,k", [(8, 64), (16, 192), (24, 128), (32, 64)])
def test_xhat_fragments_match_the_kernels_addresses(m, k):
    x = _heavy(m, k, seed=m + k).to(torch.bfloat16)
    frag = xhat_to_fragments(x)
    assert frag.shape == x.shape and torch.equal(xhat_from_fragments(frag), x)
    flat = frag.flatten()
    # the preparation's stores put every chunk where the layout says (and cover the tensor once)
    scattered = torch.full_like(flat, float("nan"))
    for r in range(m):
        for gc in range(k // 8):
            off = _prep_frag_offset(r, gc, k)
            assert scattered[off : off + 8].isnan().all()
            scattered[off : off + 8] = x[r, 8 * gc : 8 * gc + 8]
    assert torch.equal(scattered, flat)
    # a lane's two loads are its 16 row-major values of the tile (k 64t + 16q .. + 15)
    for grp in range(m // 8):
        for t in range(k // 64):
            for g in range(8):
                for q in range(4):
                    got = _stream_frag_loads(flat, grp, t, g, q, k)
                    assert torch.equal(got, x[8 * grp + g, 64 * t + 16 * q : 64 * t + 16 * q + 16])


def test_xhat_fragments_need_whole_groups_and_tiles():
    with pytest.raises(ValueError, match="M % 8"):
        xhat_to_fragments(torch.zeros(12, 64))
    with pytest.raises(ValueError, match="K % 64"):
        xhat_from_fragments(torch.zeros(8, 96))
