"""CPU tests of the op layer (sharq_vllm/ops.py): reference impls, fake impls, torch.compile
tracing, packing, dispatch, and the public API's fallbacks."""

from __future__ import annotations

import pytest
import torch

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.kernels.layout import tile_weight, xhat_to_fragments
from sharq_vllm.producers import rms_norm
from sharq_vllm.reference import (
    apply_linear,
    backbone_block,
    prepare_activation,
    quantize_weight,
    residual_block,
)


def _heavy(m, k, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(m, k, generator=g) / (torch.randn(m, k, 3, generator=g).pow(2).mean(-1).sqrt())
    t[:, torch.randperm(k, generator=g)[:3]] *= 40
    return t.to(dtype)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("pattern", ["4:8-pairs", "2:4", "dense"])
def test_prepare_cpu_is_reference(fmt, pattern):
    x = _heavy(5, 128)
    y = torch.ops.sharq.prepare(x, fmt, pattern)
    assert torch.equal(y, prepare_activation(x, fmt, pattern).x_hat)
    dbg = torch.ops.sharq.prepare_debug(x, fmt, pattern)
    assert torch.equal(dbg[0], y)
    bb, rb = backbone_block(fmt, pattern), residual_block(fmt)
    assert dbg[3].shape == (5, 128 // bb) and dbg[5].shape == (5, 128 // rb)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prepare_with_norm_is_norm_then_prepare(dtype):
    x, r = _heavy(4, 192, dtype), _heavy(4, 192, dtype, seed=7)
    w = (torch.rand(192) + 0.5).to(dtype)
    y = torch.ops.sharq.prepare_rms_norm(x, w, 1e-5, "nvfp4", "2:4")
    xn, _ = rms_norm(x, w, 1e-5)
    assert torch.equal(y, prepare_activation(xn, "nvfp4", "2:4").x_hat)
    y2, r_out = torch.ops.sharq.prepare_add_rms_norm(x, r, w, 1e-6, "mxfp4", "4:8-pairs", "tensor")
    xn2, r_want = rms_norm(x, w, 1e-6, r)
    assert torch.equal(r_out, r_want) and torch.equal(r_out, (x.float() + r.float()).to(dtype))
    assert torch.equal(y2, prepare_activation(xn2, "mxfp4", "4:8-pairs", act_scale="tensor").x_hat)


def test_linear_cpu_matches_reference():
    w = _heavy(48, 128, torch.float32, seed=3)
    payload = quantize_weight(w)
    packed = ops.pack_weight(payload, "cpu")
    assert packed.layout == ops.LAYOUT_CANONICAL
    x = _heavy(3, 128, seed=4)
    bias = torch.randn(48).to(torch.bfloat16)
    y = ops.sharq_linear(x, packed, bias, "nvfp4", "4:8-pairs")
    assert torch.equal(y, apply_linear(x, payload, bias, "nvfp4", "4:8-pairs"))
    # leading batch dims
    y3 = ops.sharq_linear(x.reshape(1, 3, 128), packed, bias)
    assert y3.shape == (1, 3, 48) and torch.equal(y3.reshape(3, 48), y)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("pattern", ["4:8-pairs", "2:4", "dense"])
@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_linear_with_no_rows(fmt, pattern, lead):
    """An empty batch (vLLM can hand a layer zero tokens) gives an empty output, not an error."""
    w = _heavy(48, 128, torch.float32, seed=3)
    packed = ops.pack_weight(quantize_weight(w), "cpu")
    x = torch.empty(*lead, 128, dtype=torch.bfloat16)
    y = ops.sharq_linear(x, packed, None, fmt, pattern)
    assert y.shape == (*lead, 48) and y.dtype == torch.bfloat16
    assert apply_linear(x, quantize_weight(w), None, fmt, pattern).shape == (*lead, 48)


def test_fake_impls_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    payload = quantize_weight(_heavy(40, 128, torch.float32))
    q, s, n_pad = tile_weight(payload.codes, payload.block_scales, 32)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(_heavy(7, 128))
        qf, sf, tsf = (
            mode.from_tensor(q),
            mode.from_tensor(s),
            mode.from_tensor(payload.tensor_scale),
        )
        xh = torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs")
        assert xh.shape == (7, 128) and xh.dtype == torch.bfloat16
        y = torch.ops.sharq.gemm(xh, qf, sf, tsf, None, 40, n_pad, 128, 32, ops.LAYOUT_TILED, 1.0)
        assert y.shape == (7, 40) and y.dtype == torch.bfloat16
        d = torch.ops.sharq.prepare_debug(x, "mxfp4", "2:4")
        assert [t.shape for t in d] == [
            (7, 128),
            (7, 128),
            (7, 64),
            (7, 2),
            (7, 64),
            (7, 4),
            (7, 2),
        ]


def test_opcheck():
    x = _heavy(3, 64)
    torch.library.opcheck(torch.ops.sharq.prepare.default, (x, "nvfp4", "2:4"))
    payload = quantize_weight(_heavy(32, 64, torch.float32))
    packed = ops.pack_weight(payload, "cpu")
    args = (
        x,
        packed.qweight,
        packed.scales,
        packed.tensor_scale,
        None,
        packed.n,
        packed.n_pad,
        packed.k,
        packed.block,
        packed.layout,
        packed.alpha,
    )
    torch.library.opcheck(torch.ops.sharq.gemm.default, args)


def test_torch_compile_fullgraph_cpu():
    payload = quantize_weight(_heavy(32, 128, torch.float32, seed=9))
    packed = ops.pack_weight(payload, "cpu")

    def f(x):
        return ops.sharq_linear(x, packed, None, "nvfp4", "4:8-pairs") + 1.0

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="eager")
    for m in (1, 5):
        x = _heavy(m, 128, seed=m)
        assert torch.equal(cf(x), f(x))


def test_dispatch_is_pure_function_of_m(monkeypatch):
    def path(m):
        return dispatch.gemm_kernel(m).name

    bound = dispatch.GEMM_KERNELS[0].max_m
    assert path(1) == "mma" and path(64) == "mma" and path(bound) == "mma"
    assert path(bound + 1) == "dequant_mm" and path(1 << 20) == "dequant_mm"
    # one kernel for every M (what a benchmark forcing the large-M path sets)
    monkeypatch.setattr(dispatch, "GEMM_KERNELS", dispatch.GEMM_KERNELS[1:])
    assert path(1) == "dequant_mm"


# H200 (132 SMs), Llama-3.1-8B's layers: which path the measured per-layer sweep
# (benchmarks/results/kernels-H200-gemm-bound.json) found faster above the "mma" bound.
@pytest.mark.parametrize(
    "m,n,want",
    [
        (768, 6144, "dequant_mm"), (768, 4096, "dequant_mm"), (768, 28672, "mma"),
        (1024, 6144, "dequant_mm"), (1024, 4096, "mma"), (1024, 28672, "mma"),
        (1536, 28672, "dequant_mm"), (1536, 4096, "dequant_mm"), (4096, 28672, "dequant_mm"),
        (512, 6144, "mma"), (256, 6144, "mma"), (1, 6144, "mma"),
    ],
)
def test_dispatch_above_the_bound_by_wave_fill(m, n, want):
    assert dispatch.gemm_kernel(m, n, 132).name == want
    assert dispatch.gemm_kernel(m).name == ("mma" if m <= dispatch.GEMM_KERNELS[0].max_m else "dequant_mm")


# H200 (132 SMs), Llama-3.1-8B's layers (kernels-H200-stream-mt4.json): the stream kernel up to 32
# rows but for gate_up (1792 strips, 6.8 rounds over 264 CTAs; 112 wgmma tiles, one wave) above 16;
# Qwen2.5-7B's gate_up (2368 strips, 148 wgmma tiles: two waves) on the stream kernel up to 32 rows
# (kernels-H200-Qwen2.5-7B.json).
@pytest.mark.parametrize(
    "m,n,want",
    [(1, 28672, "stream"), (16, 28672, "stream"), (17, 28672, "wgmma"), (32, 28672, "wgmma"),
     (17, 6144, "stream"), (32, 6144, "stream"), (32, 4096, "stream"), (33, 4096, "wgmma"), (512, 4096, "wgmma"),
     (17, 37888, "stream"), (32, 37888, "stream"), (33, 37888, "wgmma"), (32, 33792, "wgmma"), (32, 33808, "stream")],
)
def test_auto_variant(m, n, want):
    assert dispatch.auto_variant(m, n, 132) == want


def test_wave_fill():
    assert dispatch.wave_fill(1024, 4096, 132) == 128 / 132  # 4 x 32 tiles, one wave
    assert dispatch.wave_fill(1024, 6144, 132) == 192 / 264  # 4 x 48 tiles, a second wave part-empty
    assert dispatch.wave_fill(600, 6144, 132) == dispatch.wave_fill(768, 6144, 132)  # partial tiles count whole
    assert dispatch.wave_fill(256, 128 * 132, 132) == 1.0  # 132 tiles: one full wave
    assert dispatch.wave_fill(256, 128 * 133, 132) == 133 / 264  # one tile over: a second, near-empty wave


def test_kernel_path_reports_cpu():
    ok, why = ops.kernel_path_available("cpu")
    assert not ok and "reference" in why
    assert "reference" in ops.describe_kernel("cpu")


# prep.cu's launch_prep_t refuses a forced configuration whose cluster does not split K into whole
# 64-channel pieces or whose CTA exceeds its V's thread bound (sharq_kernels.h kPrepMaxThreads:
# 1024 / 1024 / 448 / 512 at V = 1 / 2 / 4 / 8); the cases worked out by hand from that rule
@pytest.mark.parametrize(
    "k,v,cl,holds",
    [
        (8192, 1, 1, True),  # 1024 chunks, 1024 threads
        (8200, 1, 1, False),  # 1025 threads
        (14336, 2, 1, True),  # 896 threads
        (14336, 4, 1, True),  # 448 threads: the two-CTA bound exactly
        (14400, 4, 1, False),  # 450 threads
        (28672, 8, 1, True),  # 448 threads of 512
        (32776, 8, 1, False),  # 513 threads
        (28672, 1, 4, True),  # 896 chunks a CTA
        (8960, 1, 7, True),  # 8960 = 7 x 1280
        (4160, 1, 2, False),  # 4160 % 128: not whole 64-channel pieces a CTA
        (4096, 1, 16, False),  # clusters of at most 8
    ],
)
def test_prep_config_holds_is_the_kernels_refusal_rule(k, v, cl, holds):
    assert dispatch.prep_config_holds(k, v, cl) is holds


@pytest.mark.parametrize(
    "k,v,cl,holds",
    [
        (4096, 1, 1, True),
        (4096, 1, 2, True),  # 256 chunks a CTA
        (4096, 1, 8, True),  # 64 chunks a CTA
        (4096, 2, 2, False),  # a cluster at one chunk a thread only
        (4096, 2, 1, True),  # a CTA of 256 threads
        (256, 2, 1, False),  # 32 chunks: a CTA of 16 threads would break the lane tree
        (3584, 1, 2, False),  # 224 chunks a CTA: not a subtree of the norm's sum
        (3584, 1, 7, True),  # 64 chunks a CTA (448 = 7 x 64)
        (5120, 1, 5, True),  # 128 chunks a CTA (640 = 5 x 128)
        (256, 1, 8, False),  # 4 chunks a CTA: a 64-channel scale block across CTAs
        (8200, 1, 1, False),  # above PREP_NORM_MAX_K
    ],
)
def test_prep_norm_config_holds_is_the_kernels_refusal_rule(k, v, cl, holds):
    assert dispatch.prep_norm_config_holds(k, v, cl) is holds


def test_dispatch_refuses_other_gpus_with_one_warning(monkeypatch):
    """The kernels are built for sm_90a: any other capability runs the reference, and the
    reason is logged once per device (and is what describe() and the load label say)."""
    warnings: list[str] = []
    monkeypatch.setattr(dispatch.log, "warning", lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setattr(dispatch, "_status", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    ok, why = dispatch.kernels_for("cuda:0")
    assert dispatch.kernels_for("cuda:0") == (ok, why)
    assert not ok and "compute capability 8.0" in why and "sm_90a" in why
    assert len(warnings) == 1 and why in warnings[0] and "no SharQ kernels for cuda:0" in warnings[0]
    assert why in dispatch.describe("cuda:0")
    assert dispatch.layer_label(False, torch.device("cuda:0")) == f"kernel=reference ({why})"
    assert not dispatch.weight_on_kernel("cuda:0", 4096, 32)


def test_dispatch_labels_from_the_same_table():
    bound = dispatch.GEMM_KERNELS[0].max_m  # the label is written from the table, not by hand
    assert [k.name for k in dispatch.GEMM_KERNELS] == ["mma", "dequant_mm"]
    label = dispatch.layer_label(True, torch.device("cuda:0"))
    fill = f" (M<={dispatch.GEMM_MMA_FILL_MAX_M} where its tiles fill {dispatch.GEMM_MMA_MIN_FILL:.0%} of the SM waves)"
    assert label == f"kernel=cuda prep + GEMM (mma kernel M<={bound}{fill}, dequant_mm kernel M>{bound})"
    tensor = dispatch.layer_label(True, torch.device("cuda:0"), act_scale="tensor")
    assert tensor.startswith("kernel=cuda PyTorch prep (act_scale=tensor") and f"mma kernel M<={bound}" in tensor
    assert dispatch.prep_values("nvfp4", "4:8-pairs") == (0, 2, 32, 16)
    assert dispatch.prep_values("mxfp4", "dense") == (1, 0, 32, 32)


def test_act_scale_tensor_runs_through_the_op_layer():
    """act_scale="tensor": PyTorch preparation with one tensor scale, then the same GEMM."""
    w = _heavy(40, 128, torch.float32, seed=4)
    packed = ops.pack_weight(quantize_weight(w), "cpu")
    x = _heavy(6, 128, seed=5)
    y = ops.sharq_linear(x, packed, None, "nvfp4", "2:4", act_scale="tensor")
    assert torch.equal(y, apply_linear(x, quantize_weight(w), None, "nvfp4", "2:4", act_scale="tensor"))
    assert not torch.equal(y, ops.sharq_linear(x, packed, None, "nvfp4", "2:4"))


@pytest.mark.parametrize("x_frag", [16, 32])
@pytest.mark.parametrize("m", [1, 8, 12, 16, 24, 32, 40])
def test_x_frag_through_the_ops(m, x_frag):
    """x_frag = 16 / 32: every preparation op returns x_hat in fragment order exactly at whole 8-row
    groups up to x_frag rows (row-major elsewhere), and the GEMM / linear read it back to the same
    outputs as row-major x_hat."""
    k = 128
    x, r = _heavy(m, k, seed=m), _heavy(m, k, seed=m + 50)
    w = (torch.rand(k, generator=torch.Generator().manual_seed(m)) + 0.5).to(torch.bfloat16)
    frag_rows = m in ((8, 16) if x_frag == 16 else (8, 16, 24, 32))  # written out, not the rule under test
    assert dispatch.xhat_fragment_rows(m, x_frag) == frag_rows

    def order(rows):
        return xhat_to_fragments(rows) if frag_rows else rows

    rows = torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs")
    frag = torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs", x_frag=x_frag)
    assert torch.equal(frag, order(rows))
    assert torch.equal(torch.ops.sharq.prepare_rms_norm(x, w, 1e-5, "nvfp4", "2:4", x_frag=x_frag),
                       order(torch.ops.sharq.prepare_rms_norm(x, w, 1e-5, "nvfp4", "2:4")))
    got, r_got = torch.ops.sharq.prepare_add_rms_norm(x, r, w, 1e-5, "nvfp4", "4:8-pairs", x_frag=x_frag)
    want, r_want = torch.ops.sharq.prepare_add_rms_norm(x, r, w, 1e-5, "nvfp4", "4:8-pairs")
    assert torch.equal(got, order(want)) and torch.equal(r_got, r_want)  # the residual stays row-major
    gu = torch.cat([x, r], dim=-1)
    assert torch.equal(torch.ops.sharq.prepare_silu_mul(gu, "mxfp4", "4:8-pairs", x_frag=x_frag),
                       order(torch.ops.sharq.prepare_silu_mul(gu, "mxfp4", "4:8-pairs")))
    packed = ops.pack_weight(quantize_weight(_heavy(40, k, torch.float32, seed=9)), "cpu")
    bias = torch.randn(40, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert torch.equal(ops.sharq_gemm(frag, packed, bias, x_frag=x_frag), ops.sharq_gemm(rows, packed, bias))
    y = ops.sharq_linear(x, packed, bias, "nvfp4", "4:8-pairs")
    assert torch.equal(ops.sharq_linear(x, packed, bias, "nvfp4", "4:8-pairs", x_frag=x_frag), y)
    # leading batch dims: the rows are counted over all of them
    y3 = ops.sharq_linear(x.reshape(1, m, k), packed, bias, "nvfp4", "4:8-pairs", x_frag=x_frag)
    assert torch.equal(y3.reshape(m, 40), y)


@pytest.mark.parametrize("bad", [True, 1, 8, 24, 64, -16])
def test_x_frag_takes_only_its_limits(bad):
    """x_frag is a row count (0, 16 or 32), not a flag: anything else is refused, never read as
    another order."""
    x = _heavy(8, 64)
    with pytest.raises((ValueError, RuntimeError), match="x_frag"):
        torch.ops.sharq.prepare(x, "nvfp4", "2:4", x_frag=bad)
    with pytest.raises(ValueError, match="x_frag"):
        dispatch.xhat_fragment_rows(8, bad)


def test_xhat_fragment_limit_follows_the_stream_kernels_rows():
    """A layer asks for fragment order up to 32 rows exactly where its GEMM takes the stream kernel
    at 17..32 rows (dispatch.auto_variant), else up to 16 (where every layer takes it)."""
    for n, sms in [(6144, 132), (4096, 132), (28672, 132), (37888, 132), (28672, 78), (1024, 16)]:
        stream_to_32 = all(dispatch.auto_variant(m, n, sms) == "stream" for m in (24, 32))
        assert dispatch.xhat_fragment_limit(n, sms) == (32 if stream_to_32 else 16), (n, sms)
    # Llama-3.1-8B on an H200: gate_up runs the decoder-warp wgmma kernel at 17..32 rows
    assert [dispatch.xhat_fragment_limit(n, 132) for n in (6144, 4096, 28672, 4096)] == [32, 32, 16, 32]


def test_serving_x_frag_without_a_cuda_weight(monkeypatch):
    """What the plugin asks for where no CUDA weight decides (no kernel plan, a CPU device): the
    rows every GEMM reads; nothing when serving does not ask for fragment order."""
    assert dispatch.serving_x_frag() == dispatch.GEMM_AUTO_MAX_M["streamwide"]
    assert dispatch.serving_x_frag(6144, torch.device("cpu")) == dispatch.GEMM_AUTO_MAX_M["streamwide"]
    monkeypatch.setattr(dispatch, "SERVING_X_FRAG", False)
    assert dispatch.serving_x_frag() == 0 and dispatch.serving_x_frag(6144, torch.device("cpu")) == 0


def test_x_frag_opcheck():
    x = _heavy(8, 64)
    torch.library.opcheck(torch.ops.sharq.prepare.default, (x, "nvfp4", "2:4", "token", 16))
    payload = quantize_weight(_heavy(32, 64, torch.float32))
    p = ops.pack_weight(payload, "cpu")
    xh = torch.ops.sharq.prepare(x, "nvfp4", "2:4", x_frag=32)
    args = (xh, p.qweight, p.scales, p.tensor_scale, None, p.n, p.n_pad, p.k, p.block, p.layout, p.alpha, 32)
    torch.library.opcheck(torch.ops.sharq.gemm.default, args)
