"""GPU: the preparation kernel, bit-exact against sharq_vllm.reference (outputs poisoned first)."""

from __future__ import annotations

import pytest
import torch
from gpu_util import (
    DTYPES,
    FMTS,
    GPU_MARKS,
    PATTERNS,
    bits,
    heavy,
    require_kernels,
)

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.reference import backbone_block, residual_block

pytestmark = GPU_MARKS


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    require_kernels()


# ------------------------------------------------------------------------------------------
# preparation kernel: bit-exact vs the reference
# ------------------------------------------------------------------------------------------
def _run_prep_debug_poisoned(x, fmt, pattern):
    m, k = x.shape
    bb, rb = backbone_block(fmt, pattern), residual_block(fmt)
    u8 = dict(dtype=torch.uint8, device=x.device)
    out = torch.full_like(x, float("nan"))
    mask = torch.full((m, k), 0xAA, **u8)
    bbc = torch.full((m, k // 2), 0xAA, **u8)
    bbs = torch.full((m, k // bb), 0xAA, **u8)
    rc = torch.full((m, k // 2), 0xAA, **u8)
    rs = torch.full((m, k // rb), 0xAA, **u8)
    ts = torch.full((m, 2), float("nan"), dtype=torch.float32, device=x.device)
    torch.ops.sharq_C.prep_debug(x, out, mask, bbc, bbs, rc, rs, ts, *dispatch.prep_values(fmt, pattern))
    return out, mask, bbc, bbs, rc, rs, ts


# The automatic configurations (prep.cu launch_prep_t / prep_cluster_size): one CTA a row for
# K <= 8192; at M <= 64 longer rows over a cluster: 8 CTAs a row (M <= 16, (2, 28672)), 7
# ((5, 8960): Qwen2.5-1.5B's down projection), the smallest giving a chunk a thread above
# M = 16 ((17, 14336): 2, (40, 8960): 2); M > 256 the throughput configuration (2 chunks a thread
# up to K = 8192: (513, 4096); 4 on CTAs of <= 448 threads, two an SM, up to K = 14336: (260,
# 14336), (300, 8960); 8 above K = 16384: (300, 28672))
PREP_SHAPES = [
    (1, 4096),
    (3, 64),
    (17, 14336),
    (255, 576),
    (2, 28672),
    (64, 1536),
    (260, 14336),
    (513, 4096),
    (7, 576),
    (32, 4096),
    (5, 8960),
    (40, 8960),
    (300, 8960),
    (300, 28672),
]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", PREP_SHAPES)
def test_prep_bit_exact(fmt, pattern, dtype, m, k):
    x = heavy(m, k, dtype)
    if m >= 3:
        x[1] = 0.0  # all-zero row
        x[2, 5] = float("nan")  # non-finite row -> NaN x_hat row
    if m >= 17:
        x[16, 7] = float("inf")
        x[15, :] = x[15, :] * 1e-30  # tiny row (subnormal-ish scales)
        # bf16 only (fp16 flushes it to zero): values ~1e-39 (bf16 subnormals) under a row max
        # of 1e-35, so the tensor scale is ~4e-39 and most blocks' d = scale * tensor scale is
        # below 2^-128: 1/d overflows (~95% of the blocks; the kernel's encode + decode branch,
        # where 0 * inf is NaN and encodes as +0)
        x[14, :] = x[14, :] * 1e-39
        x[14, 3] = 1e-35
    got = _run_prep_debug_poisoned(x, fmt, pattern)
    ref = ops._prepare_debug_reference(x.cpu(), fmt, pattern)
    names = ["x_hat", "mask", "bb_codes", "bb_scales", "res_codes", "res_scales", "tscales"]
    finite = torch.isfinite(x.cpu().float()).all(-1)
    for name, g, r in zip(names, got, ref, strict=True):
        g = g.cpu()
        if name == "x_hat":
            assert torch.isnan(g[~finite]).all(), "non-finite rows must be NaN rows"
            gb, rb_ = bits(g[finite]), bits(r[finite])
            bad = (gb != rb_).sum().item()
            assert bad == 0, f"x_hat: {bad} of {gb.numel()} elements differ"
        else:
            gf, rf = g[finite], r.to(g.dtype)[finite]
            if name == "tscales":
                assert torch.equal(gf.view(torch.int32), rf.view(torch.int32)), name
            else:
                bad = (gf != rf).sum().item()
                assert bad == 0, f"{name}: {bad} of {gf.numel()} differ"


@pytest.mark.parametrize("fmt", FMTS)
def test_reference_same_on_gpu_and_cpu(fmt):
    # run 1 failure: torch on CUDA computes `tensor / 2688.0` as `tensor * (1/2688)` (one bit
    # off in ~21% of bf16 amax values); formats.tensor_scale_of divides by a same-device tensor
    x = heavy(512, 4096, torch.bfloat16)
    g = ops._prepare_debug_reference(x, fmt, "4:8-pairs")
    c = ops._prepare_debug_reference(x.cpu(), fmt, "4:8-pairs")
    for a, b in zip(g, c, strict=True):
        a = a.cpu()
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("pattern", ["4:8-pairs", "2:4"])
def test_prepare_op_matches_debug_and_large_m(fmt, pattern):
    # the serving op (no debug outputs) gives the same x_hat; a big M against the reference
    # evaluated on the GPU (same IEEE FP32 ops; checked equal to the CPU reference above)
    x = heavy(4096, 4096, torch.bfloat16)
    y = torch.ops.sharq.prepare(x, fmt, pattern)
    ref_gpu = ops._prepare_debug_reference(x, fmt, pattern)[0]
    assert torch.equal(bits(y), bits(ref_gpu))
    xs = x[:64].cpu()
    assert torch.equal(bits(y[:64].cpu()), bits(ops._prepare_debug_reference(xs, fmt, pattern)[0]))


def test_prep_repeatable():
    x = heavy(17, 4096, torch.bfloat16)
    first = torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs")
    for _ in range(100):
        assert torch.equal(bits(torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs")), bits(first))


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("m,k", [(5, 4096), (300, 4096), (9, 14336), (300, 14336), (40, 28672)])
def test_prep_configurations_identical(fmt, m, k):
    # every (chunks a thread, CTAs a row) configuration the dispatcher may pick gives the bits
    # of the automatic one (which the tests above pin to the reference)
    x = heavy(m, k, torch.bfloat16)
    x[min(2, m - 1), 3] = float("nan")
    want = torch.ops.sharq.prepare(x, fmt, "4:8-pairs")
    ran = 0
    for v in (1, 2, 4, 8):
        for cl in (1, 2, 4, 8):
            if not dispatch.prep_config_holds(k, v, cl):
                continue
            out = torch.full_like(x, float("nan"))
            torch.ops.sharq_C.prep_cfg(x, out, *dispatch.prep_values(fmt, "4:8-pairs"), v, cl)
            assert torch.equal(bits(out), bits(want)), (v, cl)
            ran += 1
    assert ran >= 4


# ------------------------------------------------------------------------------------------
# RMSNorm (+ residual add) + preparation in one kernel: bit-exact vs sharq_vllm/producers.py and
# the reference preparation (evaluated on the CPU)
# ------------------------------------------------------------------------------------------
# one CTA a row up to K = 8192 (kPrepNormMaxK): hidden sizes of Llama / Qwen models, odd chunk
# counts (576: 72 chunks, 3 warps; 3584: 448; 5120: 640) and the largest (8192: 1024 threads)
# Above 256 rows two chunks a thread on a CTA of half the padded chunk count (prep.cu,
# launch_norm): 257 x 576 (72 chunks on 64 threads: most second chunks absent), 300 x 8192 (512
# threads), 513 x 4096.
NORM_SHAPES = [(1, 4096), (3, 64), (17, 3584), (64, 1536), (255, 576), (300, 8192), (513, 4096), (2, 5120),
               (257, 576)]
EPS = 1e-5


def _norm_inputs(m, k, dtype):
    x, r = heavy(m, k, dtype), heavy(m, k, dtype)
    w = heavy(1, k, dtype, outliers=2, scale=8.0).reshape(k)
    w[k // 3] = 0.0
    if m >= 5:
        x[1], r[1] = 0.0, 0.0  # all-zero row: ss = 0, inv = 1/sqrt(eps)
        x[2, 5] = float("nan")  # non-finite row
        x[3, :], r[3, :] = x[3, :] * 1e12, 0.0  # squares overflow FP32 (bf16): ss = Inf, inv = 0
        x[4, :], r[4, :] = x[4, :] * 1e-30, r[4, :] * 1e-30  # tiny row (bf16): subnormal squares
    return x, r, w


def _norm_reference(x, r, w, fmt, pattern):
    from sharq_vllm.producers import rms_norm
    from sharq_vllm.reference import prepare_activation

    n, r_out = rms_norm(x.cpu(), w.cpu(), EPS, None if r is None else r.cpu())
    return prepare_activation(n, fmt, pattern).x_hat, r_out


def _same_bits(got, want, what):
    got = got.cpu()
    nan = torch.isnan(want.float())
    assert torch.isnan(got.float()[nan]).all(), f"{what}: NaN elements must stay NaN"
    bad = (bits(got[~nan]) != bits(want[~nan])).sum().item()
    assert bad == 0, f"{what}: {bad} of {want.numel()} elements differ"


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", NORM_SHAPES)
@pytest.mark.parametrize("add", [True, False], ids=["add", "noadd"])
def test_prep_norm_bit_exact(fmt, pattern, dtype, m, k, add):
    x, r, w = _norm_inputs(m, k, dtype)
    if not add:
        r = None
    out = torch.full_like(x, float("nan"))
    r_out = torch.full_like(x, float("nan")) if add else None
    torch.ops.sharq_C.prep_norm(x, r, r_out, w, EPS, out, *dispatch.prep_values(fmt, pattern))
    want, want_r = _norm_reference(x, r, w, fmt, pattern)
    _same_bits(out, want, "x_hat")
    if add:
        _same_bits(r_out, want_r, "residual_out")


# Either configuration forced at a few rows (the same bits as the reference at any M): padded
# chunk counts (3584: 448 of 512; 5120: 640 of 1024; 576: 72 of 128) and the smallest K that two
# chunks a thread take (512: one warp of 32 threads)
NORM_FORCED_SHAPES = [(5, 4096), (6, 3584), (7, 576), (6, 8192), (9, 5120), (5, 512)]


@pytest.mark.parametrize("fmt,pattern", [("nvfp4", "4:8-pairs"), ("mxfp4", "2:4"), ("nvfp4", "dense")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", NORM_FORCED_SHAPES)
@pytest.mark.parametrize("v", [1, 2])
def test_prep_norm_forced_config_bit_exact(fmt, pattern, dtype, m, k, v):
    x, r, w = _norm_inputs(m, k, dtype)
    out, r_out = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    torch.ops.sharq_C.prep_norm(x, r, r_out, w, EPS, out, *dispatch.prep_values(fmt, pattern), v)
    want, want_r = _norm_reference(x, r, w, fmt, pattern)
    _same_bits(out, want, f"x_hat (v={v})")
    _same_bits(r_out, want_r, f"residual_out (v={v})")


# A row over a cluster of CTAs (launch_norm at decode rows; forced here): each CTA's chunk count
# is a power of two, so its tree sum is an aligned subtree of the row's and the cluster combines
# the roots (rms_norm_row). 2 / 4 / 8 CTAs a row of 2048 / 4096 / 8192 channels; 5 of 5120 (128
# chunks a CTA: the padded tree's top 8 nodes, 3 of them zero) and 7 of 3584 (64 chunks a CTA);
# the hostile rows of _norm_inputs from M = 5 (zero, NaN, overflowing and tiny sums).
NORM_CLUSTER_CASES = [(1, 4096, 2), (5, 4096, 4), (16, 4096, 8), (6, 8192, 8), (9, 5120, 5), (7, 3584, 7),
                      (64, 2048, 4)]


@pytest.mark.parametrize("fmt,pattern", [("nvfp4", "4:8-pairs"), ("mxfp4", "2:4"), ("nvfp4", "dense")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,cl", NORM_CLUSTER_CASES)
@pytest.mark.parametrize("add", [True, False], ids=["add", "noadd"])
def test_prep_norm_cluster_bit_exact(fmt, pattern, dtype, m, k, cl, add):
    assert dispatch.prep_norm_config_holds(k, 1, cl)
    x, r, w = _norm_inputs(m, k, dtype)
    if not add:
        r = None
    out = torch.full_like(x, float("nan"))
    r_out = torch.full_like(x, float("nan")) if add else None
    torch.ops.sharq_C.prep_norm(x, r, r_out, w, EPS, out, *dispatch.prep_values(fmt, pattern), 1, cl)
    want, want_r = _norm_reference(x, r, w, fmt, pattern)
    _same_bits(out, want, f"x_hat (cl={cl})")
    if add:
        _same_bits(r_out, want_r, f"residual_out (cl={cl})")


@pytest.mark.parametrize("k", [4096, 3584, 5120, 256])
def test_prep_norm_refusals_are_dispatch_rule(k):
    # every forced configuration runs (the automatic one's bits) exactly where
    # dispatch.prep_norm_config_holds says so, and is refused otherwise
    x, r, w = _norm_inputs(3, k, torch.bfloat16)
    codes = dispatch.prep_values("nvfp4", "4:8-pairs")
    want = torch.empty_like(x)
    torch.ops.sharq_C.prep_norm(x, r, torch.empty_like(x), w, EPS, want, *codes)
    for v in (1, 2):
        for cl in range(1, 9):
            out = torch.full_like(x, float("nan"))
            if dispatch.prep_norm_config_holds(k, v, cl):
                torch.ops.sharq_C.prep_norm(x, r, torch.empty_like(x), w, EPS, out, *codes, v, cl)
                assert torch.equal(bits(out), bits(want)), f"v={v} cl={cl}"
            else:
                with pytest.raises(RuntimeError, match="prep_norm"):
                    torch.ops.sharq_C.prep_norm(x, r, torch.empty_like(x), w, EPS, out, *codes, v, cl)


def test_prep_norm_two_chunks_needs_a_warp():
    # K = 256: 32 chunks, a CTA of 16 threads would break the lane tree: refused, not wrong
    x, r, w = _norm_inputs(4, 256, torch.bfloat16)
    out, r_out = torch.empty_like(x), torch.empty_like(x)
    with pytest.raises(RuntimeError, match="prep_norm"):
        torch.ops.sharq_C.prep_norm(x, r, r_out, w, EPS, out, *dispatch.prep_values("nvfp4", "4:8-pairs"), 2)
    torch.ops.sharq_C.prep_norm(x, r, r_out, w, EPS, out, *dispatch.prep_values("nvfp4", "4:8-pairs"), 0)
    _same_bits(out, _norm_reference(x, r, w, "nvfp4", "4:8-pairs")[0], "x_hat (auto)")


@pytest.mark.parametrize("k", [4096, 14336])
def test_prep_norm_ops_kernel_or_fallback(k):
    # K <= 8192: the fused kernel; above: producers.rms_norm on the GPU, then the preparation kernel;
    # both the reference's bits. Strided rows (a view of a wider tensor) go through _rows.
    wide = heavy(9, 2 * k, torch.bfloat16)
    x, r = wide[:, :k], heavy(9, k, torch.bfloat16)
    w = heavy(1, k, torch.bfloat16, outliers=0).reshape(k)
    assert dispatch.prep_norm_on_kernel(x, w, "nvfp4", "4:8-pairs") == (k <= dispatch.PREP_NORM_MAX_K)
    xh, r_out = torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, "nvfp4", "4:8-pairs")
    want, want_r = _norm_reference(x, r, w, "nvfp4", "4:8-pairs")
    _same_bits(xh, want, "x_hat")
    _same_bits(r_out, want_r, "residual_out")
    xh1 = torch.ops.sharq.prepare_rms_norm(x, w, EPS, "nvfp4", "4:8-pairs")
    _same_bits(xh1, _norm_reference(x, None, w, "nvfp4", "4:8-pairs")[0], "x_hat (no residual)")


def test_prep_norm_repeatable_and_graph_replay():
    x, r, w = _norm_inputs(64, 4096, torch.bfloat16)
    first = torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, "nvfp4", "4:8-pairs")
    for _ in range(100):
        again = torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, "nvfp4", "4:8-pairs")
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(again, first, strict=True))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, "nvfp4", "4:8-pairs")  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, "nvfp4", "4:8-pairs")
    for t in out:
        t.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(out, first, strict=True))


# ------------------------------------------------------------------------------------------
# SiLU * mul + preparation in one kernel: bit-exact vs producers.silu_and_mul evaluated on the
# GPU (PyTorch's CUDA silu uses the same expf) and the reference preparation
# ------------------------------------------------------------------------------------------
# K = the down projection's input: Llama-3.1-8B 14336 (cluster of 8 at M <= 8, 4 up to M = 48, 2
# above, 2 chunks a thread above M = 256), Qwen2.5-1.5B 8960 (7 CTAs at M <= 8, 4 at 9..48), small
# and odd shapes
SILU_SHAPES = [
    (1, 14336),
    (9, 14336),
    (17, 14336),
    (49, 14336),
    (300, 14336),
    (5, 8960),
    (64, 1536),
    (3, 64),
    (255, 576),
    (2, 28672),
]


def _gate_up(m, k, dtype):
    gu = torch.cat([heavy(m, k, dtype), heavy(m, k, dtype)], dim=1)
    if m >= 4:
        gu[1, :] = 0.0
        gu[2, 5] = float("nan")  # non-finite row
        gu[3, : k // 2] = -200.0  # exp(-g) overflows: silu = -0
    return gu


def _division_edges(k, dtype):
    """Gate values on both sides of the range where prep.cu's SiLU division runs unguarded
    (2^-40 <= |g| <= 2^40, g >= -40) and around exp(-g)'s overflow, cycled to k channels."""
    e = torch.arange(-64, 65, dtype=torch.float32)
    p = torch.cat([2.0**e, 2.0**e * 1.0078125, 2.0**e * 0.99609375])
    near = torch.tensor([40.0, 39.75, 40.25, 44.0, 87.0, 88.5, 89.0, 104.0, 1e30, 3e38])
    v = torch.cat([p, -p, near, -near, torch.tensor([0.0, -0.0])]).to(dtype)
    v = v[torch.isfinite(v)]
    return v.repeat(k // v.numel() + 1)[:k]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 14336), (6, 8960), (33, 1536), (3, 64)])
def test_silu_mul_values_bit_exact(dtype, m, k):
    # the fused kernel's producer alone (sharq_C.silu_mul runs the same device function) against
    # producers.silu_and_mul on the GPU, value for value: x_hat alone would hide a last-place
    # difference under the 4-bit quantization
    from sharq_vllm.producers import silu_and_mul

    gu = _gate_up(m, k, dtype)
    gu[0, :k] = _division_edges(k, dtype).to(gu.device)
    gu[-1, :k] = _division_edges(k, dtype).flip(0).to(gu.device)
    out = torch.full((m, k), float("nan"), dtype=dtype, device="cuda")
    torch.ops.sharq_C.silu_mul(gu, out)
    want = silu_and_mul(gu)
    same = (bits(out) == bits(want)) | (out.isnan() & want.isnan())  # a NaN's payload aside
    assert bool(same.all()), f"{int((~same).sum())} values differ"


def _silu_reference(gu, fmt, pattern):
    from sharq_vllm.producers import silu_and_mul
    from sharq_vllm.reference import prepare_activation

    return prepare_activation(silu_and_mul(gu).cpu(), fmt, pattern).x_hat  # silu on the GPU


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", SILU_SHAPES)
def test_prep_silu_mul_bit_exact(fmt, pattern, dtype, m, k):
    gu = _gate_up(m, k, dtype)
    out = torch.full((m, k), float("nan"), dtype=dtype, device="cuda")
    torch.ops.sharq_C.prep_silu_mul(gu, out, *dispatch.prep_values(fmt, pattern), 0, 0)
    _same_bits(out, _silu_reference(gu, fmt, pattern), "x_hat")


# x_frag: the three preparation kernels write x_hat in fragment order (layout.xhat_to_fragments)
# at the rows dispatch.xhat_fragment_rows names for x_frag = 16 / 32, the bits of their row-major
# output; row-major at other rows.
@pytest.mark.parametrize("x_frag", [16, 32])
@pytest.mark.parametrize("m", [1, 8, 12, 16, 24, 32, 40])
@pytest.mark.parametrize("k", [4096, 14336, 576])
def test_prep_x_frag_is_the_row_major_output_in_fragment_order(m, k, x_frag):
    from sharq_vllm.kernels.layout import xhat_to_fragments

    dtype = torch.bfloat16
    codes = dispatch.prep_values("nvfp4", "4:8-pairs")

    def order(rows):
        return xhat_to_fragments(rows) if dispatch.xhat_fragment_rows(m, x_frag) else rows

    def pair(run):
        rows = torch.full((m, k), float("nan"), dtype=dtype, device="cuda")
        frag = torch.full_like(rows, float("nan"))
        run(rows, 0)
        run(frag, x_frag)
        _same_bits(frag, order(rows).cpu(), "x_hat in fragment order")

    x = heavy(m, k, dtype)
    pair(lambda out, f: torch.ops.sharq_C.prep(x, out, *codes, f))
    if k <= dispatch.PREP_NORM_MAX_K:
        xn, r, w = _norm_inputs(m, k, dtype)
        r_out = torch.empty_like(xn)
        pair(lambda out, f: torch.ops.sharq_C.prep_norm(xn, r, r_out, w, EPS, out, *codes, 0, 0, f))
        pair(lambda out, f: torch.ops.sharq_C.prep_norm(xn, None, None, w, EPS, out, *codes, 0, 0, f))
    gu = _gate_up(m, k, dtype)
    pair(lambda out, f: torch.ops.sharq_C.prep_silu_mul(gu, out, *codes, 0, 0, f))


@pytest.mark.parametrize("v,cl", [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (1, 7), (2, 4)])
def test_prep_silu_mul_configurations_identical(v, cl):
    m, k = 9, 8960
    gu = _gate_up(m, k, torch.bfloat16)
    want = torch.empty((m, k), dtype=torch.bfloat16, device="cuda")
    torch.ops.sharq_C.prep_silu_mul(gu, want, *dispatch.prep_values("nvfp4", "4:8-pairs"), 0, 0)
    if not dispatch.prep_config_holds(k, v, cl):
        pytest.skip("configuration does not hold this row")
    got = torch.full_like(want, float("nan"))
    torch.ops.sharq_C.prep_silu_mul(gu, got, *dispatch.prep_values("nvfp4", "4:8-pairs"), v, cl)
    assert torch.equal(bits(got), bits(want))


def test_prepare_silu_mul_op_and_graph_replay():
    # the op (strided input: a view of a wider tensor goes through _rows), 100 runs, CUDA graph
    wide = torch.cat([_gate_up(33, 14336, torch.bfloat16), heavy(33, 64, torch.bfloat16)], dim=1)
    gu = wide[:, : 2 * 14336]
    first = torch.ops.sharq.prepare_silu_mul(gu, "nvfp4", "4:8-pairs")
    _same_bits(first, _silu_reference(gu, "nvfp4", "4:8-pairs"), "x_hat")
    for _ in range(100):
        assert torch.equal(bits(torch.ops.sharq.prepare_silu_mul(gu, "nvfp4", "4:8-pairs")), bits(first))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.ops.sharq.prepare_silu_mul(gu, "nvfp4", "4:8-pairs")
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.sharq.prepare_silu_mul(gu, "nvfp4", "4:8-pairs")
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits(out), bits(first))
    # odd halves the kernel cannot take fall back to producers.silu_and_mul + the preparation
    odd = heavy(4, 2 * 40, torch.bfloat16)
    assert not dispatch.prep_silu_mul_on_kernel(odd, "nvfp4", "4:8-pairs")
