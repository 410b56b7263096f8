"""GPU: the W4A16 GEMM paths vs an FP32 matmul of the dequantized operands (1e-2 rel. Frobenius)."""

from __future__ import annotations

import pytest
import torch
from gpu_util import (
    DTYPES,
    GPU_MARKS,
    heavy,
    packed_weight,
    rel,
    require_kernels,
)

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.kernels.dispatch import GEMM_VARIANT_MAX_M, GEMM_VARIANTS
from sharq_vllm.reference import dequantize_weight, quantize_weight

pytestmark = GPU_MARKS


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    require_kernels()


# ------------------------------------------------------------------------------------------
# GEMM
# ------------------------------------------------------------------------------------------
GEMM_SHAPES = [(6144, 4096), (4096, 14336), (40, 576), (1536, 8960)]
GEMM_MS = [1, 3, 16, 17, 64, 255, 4096]  # 1-8, 9-16: stream kernel MT=1/2


@pytest.mark.parametrize("n,k", GEMM_SHAPES)
@pytest.mark.parametrize("m", GEMM_MS)
@pytest.mark.parametrize("path", ["mma", "dequant_mm"])
def test_gemm_paths(n, k, m, path):
    if path == "mma" and m > 512:
        pytest.skip("mma path is dispatched for small M only")
    dtype = torch.bfloat16
    payload, packed = packed_weight(n, k)
    x = heavy(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    w_hat = dequantize_weight(payload).cuda()
    ref = x.float() @ w_hat.T
    if bias is not None:
        ref += bias.float()
    if path == "mma":
        y = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        torch.ops.sharq_C.gemm_mma(
            x,
            packed.qweight,
            packed.scales,
            packed.tensor_scale,
            bias,
            y,
            packed.n_pad,
            packed.block,
        )
    else:
        y = ops.run_gemm_kernel("dequant_mm", x, packed, bias)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    err = rel(y, ref)
    assert err < 1e-2, err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("m", [1, 8, 9, 33])
def test_gemm_dtypes_blocks(dtype, block, m):
    n, k = 272, 1024
    payload, packed = packed_weight(n, k, block=block)
    x = heavy(m, k, dtype, scale=4.0)
    bias = heavy(1, n, dtype).reshape(n)
    ref = x.float() @ dequantize_weight(payload).cuda().T + bias.float()
    y = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    torch.ops.sharq_C.gemm_mma(
        x, packed.qweight, packed.scales, packed.tensor_scale, bias, y, packed.n_pad, packed.block
    )
    assert torch.isfinite(y).all()
    assert rel(y, ref) < 1e-2
    # dequantize kernel: e2m1 * s exactly in 16 bits (checked against the canonical payload);
    # times the tensor scale it is the reference up to FP32 rounding order
    w = torch.full((packed.n_pad, k), float("nan"), dtype=dtype, device="cuda")
    torch.ops.sharq_C.dequant(packed.qweight, packed.scales, w, block)
    assert not torch.isnan(w).any()
    from sharq_vllm.fp4 import e2m1_decode, unpack_nibbles

    exact = e2m1_decode(unpack_nibbles(payload.codes)).reshape(
        n, k // block, block
    ) * payload.block_scales.float().unsqueeze(-1)
    assert torch.equal(w[:n].float(), exact.reshape(n, k))
    assert torch.allclose(
        w[:n].float() * packed.tensor_scale, dequantize_weight(payload), rtol=1e-6, atol=0
    )


def test_gemm_exact_small_integers():
    # integer-valued operands: every product and partial sum is exact in FP32, so the kernel
    # must reproduce the FP32 reference up to the final scale (catches dequant bit errors)
    n, k, m = 64, 256, 5
    w = torch.randint(-6, 7, (n, k)).float()
    w[:, 0] = 6.0
    payload = quantize_weight(w, block=32)
    packed = ops.pack_weight(payload, "cuda")
    x = torch.randint(-3, 4, (m, k)).to(torch.bfloat16).cuda()
    ref = x.float() @ dequantize_weight(payload).cuda().T
    y = ops.sharq_gemm(x, packed).float()
    assert rel(y, ref) < 4e-3


@pytest.mark.parametrize("n,k", [(6144, 4096), (1552, 576)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dequant_mm_bounded_workspace_is_exact(monkeypatch, n, k, with_bias):
    """The chunked large-M path (bounded dequant workspace) matches the fp32 reference and the
    single-shot path (up to cuBLAS choosing another algorithm for a narrower problem)."""
    payload, packed = packed_weight(n, k)
    x = heavy(300, k, torch.bfloat16)
    bias = heavy(1, n, torch.bfloat16).reshape(n) if with_bias else None
    whole = ops.run_gemm_kernel("dequant_mm", x, packed, bias)
    monkeypatch.setattr(ops, "DEQUANT_WORKSPACE_BYTES", 16 * k * 2 * 5)  # 80-row chunks
    chunked = ops.run_gemm_kernel("dequant_mm", x, packed, bias)
    assert torch.isfinite(chunked).all()
    ref = x.float() @ dequantize_weight(payload).cuda().T + (bias.float() if bias is not None else 0)
    assert rel(chunked, ref) < 1e-2
    # cuBLAS may pick another algorithm for a narrower problem: equal up to bf16 rounding
    assert rel(chunked, whole) < 4e-3


@pytest.mark.parametrize("m", [1, 9, 33, 300])
def test_gemm_row_blocks_with_own_tensor_scales(m):
    """Fused layers of NVFP4 checkpoints whose members carry different tensor scales
    (ops.sharq_gemm_rows): on the kernels, each row block's GEMM with its bias slice, side by
    side, and the FP32 reference of the stacked weights; every M path (stream, tile, dequant)."""
    k = 1024
    blocks = [packed_weight(n, k, block=16) for n in (256, 64, 48)]
    assert len({float(p.tensor_scale) for _, p in blocks}) == 3
    x = heavy(m, k, torch.bfloat16)
    bias = heavy(1, 368, torch.bfloat16).reshape(368)
    y = ops.sharq_gemm_rows(x, [p for _, p in blocks], bias)
    parts, r0 = [], 0
    for _, p in blocks:
        parts.append(ops.sharq_gemm(x, p, bias[r0 : r0 + p.n]))
        r0 += p.n
    assert torch.equal(y, torch.cat(parts, dim=-1))
    w = torch.cat([dequantize_weight(pl).cuda() for pl, _ in blocks])
    assert rel(y, x.float() @ w.T + bias.float()) < 1e-2


# Above the "mma" bound the op takes "mma" where the token-wide wgmma tiles fill the SM waves
# (dispatch.gemm_kernel; on 132 SMs: 768 x 5632 = 3 x 44 tiles, 1024 x 4096 = 4 x 32; 768 x 4096 =
# 3 x 32 leaves 36 SMs idle): the op's output is that path's, bit for bit.
@pytest.mark.parametrize("m,n,path", [(768, 5632, "mma"), (1024, 4096, "mma"), (768, 4096, "dequant_mm")])
def test_gemm_path_above_the_bound_by_wave_fill(m, n, path):
    if dispatch.sm_count(torch.device("cuda")) != 132:
        pytest.skip("the expected paths are worked out for 132 SMs (H100 / H200 SXM)")
    assert dispatch.gemm_kernel(m, n, 132).name == path
    payload, packed = packed_weight(n, 1024)
    x = heavy(m, 1024, torch.bfloat16)
    y = ops.sharq_gemm(x, packed, None)
    assert torch.isfinite(y).all()
    assert torch.equal(y, ops.run_gemm_kernel(path, x, packed, None))
    assert rel(y, x.float() @ dequantize_weight(payload).cuda().T) < 1e-2


# Forced GEMM kernels (dispatch.GEMM_VARIANTS). The mma.sync kernels (the register stream kernel,
# M <= 16, and the tile kernel) share one tile order and one fixed-order reduction: they give the
# same bits. The wgmma kernel sums in its own fixed order: equal to them up to FP32 summation
# order, and to itself (every launch, and the automatic path above M = 16) bit for bit.
FORCED = {name: v for name, v in GEMM_VARIANTS.items() if name != "auto"}
MMA_SYNC = ("stream", "tile")


def _x(m, k, dtype):
    """Heavy-tailed rows; fp16 ones scaled down 16x so no output overflows fp16 (a legitimate inf
    would fail the NaN-poison check)."""
    x = heavy(m, k, torch.float32)
    return (x / 16 if dtype == torch.float16 else x).to(dtype)


def _forced(x, packed, bias, variant, dtype):
    y = torch.full((x.shape[0], packed.n), float("nan"), dtype=dtype, device="cuda")
    args = (packed.qweight, packed.scales, packed.tensor_scale, bias)
    torch.ops.sharq_C.gemm_mma_cfg(x, *args, y, packed.n_pad, packed.block, variant)
    return y


def _auto(x, packed, bias, dtype):
    y = torch.full((x.shape[0], packed.n), float("nan"), dtype=dtype, device="cuda")
    torch.ops.sharq_C.gemm_mma(x, packed.qweight, packed.scales, packed.tensor_scale, bias, y, packed.n_pad, packed.block)
    return y


def _assert_wgmma_output(y, x, payload, packed, bias, dtype):
    """A wgmma GEMM's y: written everywhere, the reference's up to FP32 summation order and within
    one 16-bit rounding step of the tile kernel's."""
    ref = x.float() @ dequantize_weight(payload).cuda().T + (bias.float() if bias is not None else 0)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert rel(y, ref) < 1e-2, rel(y, ref)
    assert rel(y, _forced(x, packed, bias, FORCED["tile"], dtype)) < 4e-3


def _assert_graph_replays(x, packed, bias, y, variant=None):
    """gemm_mma (or gemm_mma_cfg with `variant`) captured in a CUDA graph: every replay gives the
    eager output y bit for bit."""
    static_y = torch.full_like(y, float("nan"))
    args = (x, packed.qweight, packed.scales, packed.tensor_scale, bias, static_y, packed.n_pad, packed.block)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if variant is None:
            torch.ops.sharq_C.gemm_mma(*args)
        else:
            torch.ops.sharq_C.gemm_mma_cfg(*args, variant)
    for _ in range(3):
        static_y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, y), "graph replay differs from eager"


# The stream kernel's walks (gemm.cu): one strip a CTA at 3 CTAs an SM (6144 x 4096, the wave
# rule), part of the grid idle on one long strip each (48 x 14336), 7 strips a CTA of one step each
# (29568 x 2048), steps with tiles past K (1552 x 1472, 4096 x 64: K/64 not a multiple of 8U), a
# layer too wide for one wave of wgmma tiles (37888 x 256, Qwen2.5-7B gate_up's N: the stream
# kernel up to M = 32 on 132 SMs, dispatch.auto_variant).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,k,block",
    [(6144, 4096, 32), (1552, 1472, 16), (48, 14336, 32), (4096, 64, 16), (29568, 2048, 16), (37888, 256, 16)],
)
@pytest.mark.parametrize("m", [1, 5, 8, 9, 16, 17, 24, 25, 32])
def test_gemm_variants_same_bits(dtype, n, k, block, m):
    payload, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    ref = x.float() @ dequantize_weight(payload).cuda().T + (bias.float() if bias is not None else 0)
    tile = _forced(x, packed, bias, FORCED["tile"], dtype)
    assert torch.isfinite(tile).all()
    assert rel(tile, ref) < 1e-2
    auto = dispatch.auto_variant(m, packed.n_pad, dispatch.sm_count(torch.device("cuda")))
    if auto == "stream":  # the automatic kernel is an mma.sync one
        assert torch.equal(_auto(x, packed, bias, dtype), tile), "the automatic kernel differs from the tile kernel"
    else:  # 29568 x 2048 above M = 16: 1848 strips, more than GEMM_STREAM_MAX_ROUNDS rounds, 116 wgmma tiles
        assert torch.equal(_auto(x, packed, bias, dtype), _forced(x, packed, bias, FORCED["wgmma"], dtype))
    for name in MMA_SYNC:
        if m > GEMM_VARIANT_MAX_M.get(name, m):
            continue
        for _ in range(3):  # repeated launches give the same bits
            assert torch.equal(_forced(x, packed, bias, FORCED[name], dtype), tile), f"{name} differs from the tile kernel"


# x_hat in fragment order (x_frag; layout.xhat_to_fragments): at the rows dispatch.xhat_fragment_rows
# names for x_frag = 16 / 32, the automatic GEMM (the stream kernel's XF instantiations, MT = 1 / 2 / 4
# and the two 16-row tiles of the wave rule) gives the bits of row-major x_hat, over the stream
# kernel's walks above; at other rows x_frag changes nothing. A layer whose automatic kernel at 24 /
# 32 rows is wgmma (above its dispatch.xhat_fragment_limit) refuses fragments there, and so does a
# forced kernel other than the stream kernel; the forced stream kernel reads them at any N.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,k,block",
    [(6144, 4096, 32), (1552, 1472, 16), (48, 14336, 32), (4096, 64, 16), (29568, 2048, 16), (37888, 256, 16)],
)
@pytest.mark.parametrize("m", [1, 8, 12, 16, 24, 32])
def test_gemm_x_frag_same_bits(dtype, n, k, block, m):
    from sharq_vllm.kernels.layout import xhat_to_fragments

    _, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if n % 3 else None
    rows = _auto(x, packed, bias, dtype)
    stream_rows = _forced(x, packed, bias, FORCED["stream"], dtype)
    limit = dispatch.xhat_fragment_limit(packed.n_pad, dispatch.sm_count(x.device))
    y = torch.full((m, packed.n), float("nan"), dtype=dtype, device="cuda")
    args = (packed.qweight, packed.scales, packed.tensor_scale, bias, y, packed.n_pad, packed.block)
    for x_frag in (16, 32):
        frag = dispatch.xhat_fragment_rows(m, x_frag)
        xf = xhat_to_fragments(x) if frag else x
        y.fill_(float("nan"))
        torch.ops.sharq_C.gemm_mma_cfg(xf, *args, FORCED["stream"], x_frag)
        assert torch.equal(y, stream_rows)
        if frag:
            with pytest.raises(RuntimeError, match="stream kernel only"):
                torch.ops.sharq_C.gemm_mma_cfg(xf, *args, FORCED["tile"], x_frag)
        if frag and not dispatch.xhat_fragment_rows(m, limit):  # Llama-3.1-8B's gate_up shape at 24 / 32
            assert dispatch.auto_variant(m, packed.n_pad, dispatch.sm_count(x.device)) == "wgmma"
            with pytest.raises(RuntimeError, match="stream kernel only"):
                torch.ops.sharq_C.gemm_mma(xf, *args, x_frag)
            continue
        for _ in range(3):
            y.fill_(float("nan"))
            torch.ops.sharq_C.gemm_mma(xf, *args, x_frag)
            assert torch.equal(y, rows)
        assert torch.equal(ops.run_gemm(xf, packed, bias, x_frag=x_frag), rows)


WGMMA_SHAPES = [(6144, 4096, 32), (1552, 1472, 16), (48, 14336, 32), (4096, 64, 16), (40, 576, 16)]
WGMMA_MS = [1, 16, 17, 24, 25, 32, 33, 64, 65, 128, 129, 200, 256, 257, 600]  # every bucket and its edges


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,block", WGMMA_SHAPES)
@pytest.mark.parametrize("m", WGMMA_MS)
def test_gemm_wgmma(dtype, n, k, block, m):
    """The wgmma kernel (forced) against an FP32 matmul of the dequantized operands and against the
    mma.sync tile kernel (FP32 summation order only), bit-stable over launches, and the automatic
    path's bits above M = 16."""
    payload, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    ref = x.float() @ dequantize_weight(payload).cuda().T + (bias.float() if bias is not None else 0)
    y = _forced(x, packed, bias, FORCED["wgmma"], dtype)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert rel(y, ref) < 1e-2, rel(y, ref)
    tile = _forced(x, packed, bias, FORCED["tile"], dtype)
    assert rel(y, tile) < 4e-3, rel(y, tile)  # one 16-bit rounding step at most, on few outputs
    for _ in range(2):
        assert torch.equal(_forced(x, packed, bias, FORCED["wgmma"], dtype), y), "wgmma: launches differ"
    if dispatch.auto_variant(m, packed.n_pad, dispatch.sm_count(torch.device("cuda"))) == "wgmma":
        assert torch.equal(_auto(x, packed, bias, dtype), y), "the automatic kernel is not the wgmma kernel"


# The tokens' last x_hat box brings only its rows (gemm_wgmma.cu, x_tail_rows: rows rounded up to
# 8, the rest of the box stale shared memory that feeds only token columns past M): M = 129 / 300 /
# 600 end the token-wide kernel's last 256-row tile short (136 / 48 / 88 rows), 256 does not; 6144 x
# 4096 runs on 48 tiles (cluster split-K), 4000 x 1472 ends on a partial tile with K/64 = 23. Against
# the reference and the tile kernel, bit-stable over launches and under CUDA-graph replay.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,block", [(6144, 4096, 32), (4000, 1472, 16)])
@pytest.mark.parametrize("m", [129, 256, 300, 600])
def test_gemm_wgmma_short_last_box(dtype, n, k, block, m):
    payload, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    y = _auto(x, packed, bias, dtype)
    _assert_wgmma_output(y, x, payload, packed, bias, dtype)
    for _ in range(5):
        assert torch.equal(_auto(x, packed, bias, dtype), y), "launches differ"
    _assert_graph_replays(x, packed, bias, y)


# The register-source wgmma kernel (gemm_wgmma_rs.cu, forced; M <= 64): x_hat's share of K a CTA
# in shared memory, split over a cluster of S = 1 / 2 / 4 / 8 CTAs where it does not fit (the rule
# of rs_split, restated: NT token columns = M rounded up to 16 / 32 / 64, 128 bytes a token a
# k-tile, 4 x 64 x NT FP32 partials when split, 220 KB). Shapes: one group of 4 strips short
# (48 x 14336: S = 8 at NT = 32), a group count not a multiple of the warpgroups and K/64 odd
# (1552 x 1472), one k-tile (4096 x 64), N = 40 (a partial strip), 6144 x 4096 (qkv: S = 2 at 32
# rows, 4 at 64), 29568 x 2048 (many groups: several rounds).
RS_SHAPES = [(6144, 4096, 32), (1552, 1472, 16), (48, 14336, 32), (4096, 64, 16), (40, 576, 16), (29568, 2048, 16)]
RS_MS = [1, 5, 8, 9, 16, 17, 24, 32, 33, 48, 64]


def _rs_split(m: int, k: int) -> int:
    nt = 16 if m <= 16 else 32 if m <= 32 else 64
    kt = k // 64
    for s in (1, 2, 4, 8):
        if s <= kt and -(-kt // s) * nt * 128 + (4 * 64 * nt * 4 if s > 1 else 0) <= 220 * 1024:
            return s
    return 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,block", RS_SHAPES)
@pytest.mark.parametrize("m", RS_MS)
def test_gemm_wgmma_rs(dtype, n, k, block, m):
    """The register-source wgmma kernel (forced) against an FP32 matmul of the dequantized operands
    and the mma.sync tile kernel (FP32 summation order only), bit-stable over launches; a shape
    whose x_hat share cannot fit is refused with an error, not run."""
    payload, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    if _rs_split(m, k) == 0:
        with pytest.raises(RuntimeError):
            _forced(x, packed, bias, FORCED["wgmmars"], dtype)
        return
    ref = x.float() @ dequantize_weight(payload).cuda().T + (bias.float() if bias is not None else 0)
    y = _forced(x, packed, bias, FORCED["wgmmars"], dtype)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert rel(y, ref) < 1e-2, rel(y, ref)
    tile = _forced(x, packed, bias, FORCED["tile"], dtype)
    assert rel(y, tile) < 4e-3, rel(y, tile)
    for _ in range(2):
        assert torch.equal(_forced(x, packed, bias, FORCED["wgmmars"], dtype), y), "wgmmars: launches differ"


# The decoder-warp wgmma kernel at M <= 64 takes 224 weight rows a CTA instead of 256 where that
# fills the SMs in one wave without split-K (gemm_wgmma.cu, dec_bn; on 132 SMs: 1792 < N/16 <= 1848):
# the rows of a 1848-strip weight (224-row tiles) against the same rows of an 1856-strip one
# (256-row tiles: 133 tiles of 224 would not fit). A CTA's k-tiles start at a rotation of its tile
# index, so the two sum each output in another FP32 order: equal to that tolerance, each stable
# over launches. The weight's maximum sits in the shared rows: both quantize to the same codes.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 17, 32, 33, 64, 65])  # 65: 256-row tiles for both (BM = 128)
def test_gemm_wgmma_224_row_tiles(dtype, m):
    if dispatch.sm_count(torch.device("cuda")) != 132:
        pytest.skip("the strip counts are worked out for 132 SMs (H100 / H200 SXM)")
    n_wide, n, k = 1856 * 16, 1848 * 16, 256
    w = heavy(n_wide, k, torch.float32, device="cuda")
    w[0, 0] = w.abs().max() * 2
    # fp16: weights 64x smaller too (as _x's rows), or output column 0 (the doubled maximum) exceeds
    # fp16's 65504 in ~7% of draws at M = 65 (a legitimate inf, which failed the NaN-poison check
    # once on an H200: session 42); the codes do not change with the scale
    w = w / 64 if dtype == torch.float16 else w
    wide = ops.pack_weight(quantize_weight(w, block=16), "cuda")
    payload = quantize_weight(w[:n], block=16)
    narrow = ops.pack_weight(payload, "cuda")
    assert torch.equal(wide.tensor_scale, narrow.tensor_scale)
    x = _x(m, k, dtype)
    bias = heavy(1, n_wide, dtype).reshape(n_wide) if m % 2 else None
    b_n = None if bias is None else bias[:n].contiguous()
    y_wide = _forced(x, wide, bias, FORCED["wgmma"], dtype)
    y = _forced(x, narrow, b_n, FORCED["wgmma"], dtype)
    assert torch.isfinite(y).all() and torch.isfinite(y_wide).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    ref = x.float() @ dequantize_weight(payload).cuda().T + (b_n.float() if b_n is not None else 0)
    assert rel(y, ref) < 1e-2, rel(y, ref)
    assert rel(y, y_wide[:, :n]) < 4e-3, rel(y, y_wide[:, :n])  # FP32 summation order only
    for _ in range(2):
        assert torch.equal(_forced(x, narrow, b_n, FORCED["wgmma"], dtype), y), "224-row tiles: launches differ"


# The BM = 64 decoder-warp kernel on layers whose weight tiles fill the SMs in one wave without
# split-K (gemm_wgmma.cu; Llama-3.1-8B gate_up: 128 tiles of 224 rows, 28672 x 4096; 32768 x 1024:
# 128 tiles of 256 rows), with K long enough that every ring slot is refilled many times: against
# the reference and the tile kernel, bit-stable over launches and under CUDA-graph replay (session 51
# ran it on the x_hat multicast variants of benchmarks/results/kernels-H200-dec-multicast.json too).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,block", [(28672, 4096, 16), (32768, 1024, 32)])
@pytest.mark.parametrize("m", [17, 24, 32, 33, 48, 64])
def test_gemm_wgmma_one_wave_tiles(dtype, n, k, block, m):
    payload, packed = packed_weight(n, k, block=block)
    x = _x(m, k, dtype)
    bias = heavy(1, n, dtype).reshape(n) if m % 2 else None
    y = _forced(x, packed, bias, FORCED["wgmma"], dtype)
    _assert_wgmma_output(y, x, payload, packed, bias, dtype)
    for _ in range(3):
        assert torch.equal(_forced(x, packed, bias, FORCED["wgmma"], dtype), y), "launches differ"
    _assert_graph_replays(x, packed, bias, y, FORCED["wgmma"])


def test_gemm_variant_out_of_range_is_refused():
    _, packed = packed_weight(64, 256)
    x = heavy(40, 256, torch.bfloat16)
    y = torch.empty((40, 64), dtype=torch.bfloat16, device="cuda")
    args = (packed.qweight, packed.scales, packed.tensor_scale, None, y, packed.n_pad, packed.block)
    for bad in (-1, max(GEMM_VARIANTS.values()) + 1, 99):  # one past the last sharq::GemmVariant
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.sharq_C.gemm_mma_cfg(x, *args, bad)
    assert x.shape[0] > GEMM_VARIANT_MAX_M["stream"]
    with pytest.raises(RuntimeError):  # the stream kernel serves M <= GEMM_VARIANT_MAX_M["stream"]
        torch.ops.sharq_C.gemm_mma_cfg(x, *args, FORCED["stream"])
