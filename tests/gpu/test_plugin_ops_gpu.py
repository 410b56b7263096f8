"""GPU: the vLLM plugin's ops (sharq_vllm/vllm_plugin/linear_method.py) on real SharQ layers.

A layer packed for the kernels calls them directly under its KernelPlan (the decisions made
once at load); every other call goes through sharq_vllm.ops' general ops. Both must give the
same bits: each plugin op against the general op on fresh heavy-tailed data, at M on both
sides of the GEMM's kernel bounds (stream, wgmma, dequantize + cuBLAS), with and without bias,
and the layers whose plan sends them the general way (per-tensor activation scales, float32
activations). x_hat between a producer and its GEMM is in fragment order at the rows the layer's
plan names (KernelPlan.x_frag), so the general ops are asked for the same. Needs vLLM (the
plugin's layer classes).
"""

from __future__ import annotations

import pytest
import torch
from gpu_util import GPU_MARKS, bits, heavy, require_kernels

vllm = pytest.importorskip("vllm")

from sharq_vllm import ops  # noqa: E402
from sharq_vllm.kernels import dispatch  # noqa: E402
from sharq_vllm.vllm_plugin import linear_method  # noqa: E402

pytestmark = GPU_MARKS
K = 4096
EPS = 1e-5
MS = (1, 5, 8, 16, 24, 32, 33, 64, 300, 700, 1500)


@pytest.fixture(scope="module", autouse=True)
def _env() -> None:
    require_kernels()
    from tests.vllm_plugin.vllm_env import init_vllm

    init_vllm()


def _layer(prefix: str, n: int, k: int = K, bias: bool = False, dtype: torch.dtype = torch.bfloat16, **opts: object):  # type: ignore[no-untyped-def]
    """A ReplicatedLinear quantized by SharQ from a fresh CUDA weight (the online path's
    process_weights_after_loading, as vLLM's loader ends it)."""
    from vllm.model_executor.layers.linear import ReplicatedLinear

    from tests.vllm_plugin.vllm_env import sharq_config

    layer = ReplicatedLinear(k, n, bias=bias, quant_config=sharq_config(**opts), prefix=prefix, params_dtype=dtype)
    layer.weight = torch.nn.Parameter(heavy(n, k, dtype, outliers=2, scale=8.0), requires_grad=False)
    if bias:
        layer.bias = torch.nn.Parameter(heavy(1, n, dtype, outliers=0).reshape(n), requires_grad=False)
    layer._already_called_process_weights_after_loading = False
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(bits(a), bits(b)), f"max |diff| {(a.float() - b.float()).abs().max().item()}"


def _poison() -> None:
    """NaN-fill memory the caching allocator hands out next (an output the op leaves unwritten
    would show)."""
    t = torch.full((64 << 20,), float("nan"), dtype=torch.bfloat16, device="cuda")
    del t


def test_plan_decided_at_load() -> None:
    plan = _layer("p.kernel", 96).sharq_plan
    assert plan is not None and plan.prep and plan.norm and plan.dtype == torch.bfloat16
    per_tensor = _layer("p.tensor", 96, act_scale="tensor").sharq_plan
    assert per_tensor is not None and not per_tensor.prep and not per_tensor.norm  # the GEMM still direct
    assert _layer("p.fp32", 96, dtype=torch.float32).sharq_plan is None
    # fragment order up to 32 rows where the layer's GEMM takes the stream kernel there, else 16
    sms = dispatch.sm_count(torch.device("cuda"))
    for n in (96, 28672):
        want = dispatch.xhat_fragment_limit(n, sms)
        assert _layer(f"p.frag{n}", n).sharq_plan.x_frag == want


def test_plan_follows_replaced_buffers() -> None:
    """A buffer replaced after load (a module move, a reload) is what the next call reads."""
    layer = _layer("t.replaced", 96)
    o = layer.quant_method.options
    x = heavy(5, K, torch.bfloat16)
    before = torch.ops.sharq_plugin.linear(x, None, layer.sharq_layer_name)
    layer.sharq_qweight = torch.zeros_like(layer.sharq_qweight)  # every weight code 0
    after = torch.ops.sharq_plugin.linear(x, None, layer.sharq_layer_name)
    _same(after, ops.sharq_linear(x, linear_method.packed_weight(layer), None, o.format, o.pattern))
    assert before.abs().max() > 0 and after.abs().max() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_linear_ops_same_bits_as_general_ops(bias: bool) -> None:
    layer = _layer(f"q.qkv{bias}", 6144 + 16, bias=bias)  # N not a multiple of the 256-row tiles
    o = layer.quant_method.options
    packed = linear_method.packed_weight(layer)
    b = layer.bias if bias else None
    xf = layer.sharq_plan.x_frag
    for m in MS:
        x = heavy(m, K, torch.bfloat16)
        _poison()
        y = torch.ops.sharq_plugin.linear(x, b, layer.sharq_layer_name)
        _same(y, ops.sharq_linear(x, packed, b, o.format, o.pattern))
        x_hat = torch.ops.sharq.prepare(x, o.format, o.pattern, x_frag=xf)
        _same(torch.ops.sharq_plugin.linear_prepared(x_hat, b, layer.sharq_layer_name),
              ops.sharq_gemm(x_hat, packed, b, x_frag=xf))
        assert not torch.isnan(y).any()


def test_producer_ops_same_bits_as_general_ops() -> None:
    qkv, down = _layer("r.qkv", 96), _layer("r.down", 64, k=2 * K)
    o = qkv.quant_method.options
    xq, xd = qkv.sharq_plan.x_frag, down.sharq_plan.x_frag
    w = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
    for m in MS:
        x, r = heavy(m, K, torch.bfloat16), heavy(m, K, torch.bfloat16, outliers=0)
        _poison()
        _same(torch.ops.sharq_plugin.rms_norm_prepare(x, w, EPS, qkv.sharq_layer_name),
              torch.ops.sharq.prepare_rms_norm(x, w, EPS, o.format, o.pattern, x_frag=xq))
        got = torch.ops.sharq_plugin.add_rms_norm_prepare(x, r, w, EPS, qkv.sharq_layer_name)
        want = torch.ops.sharq.prepare_add_rms_norm(x, r, w, EPS, o.format, o.pattern, x_frag=xq)
        _same(got[0], want[0])
        _same(got[1], want[1])
        gu = heavy(m, 4 * K, torch.bfloat16)
        _same(torch.ops.sharq_plugin.silu_mul_prepare(gu, down.sharq_layer_name),
              torch.ops.sharq.prepare_silu_mul(gu, o.format, o.pattern, x_frag=xd))


def test_general_path_layers() -> None:
    """Per-tensor activation scales (the preparation in PyTorch) and float32 activations
    (no kernel takes them): the plugin ops give the general ops' results."""
    per_tensor = _layer("s.tensor", 96, act_scale="tensor")
    x = heavy(7, K, torch.bfloat16)
    o = per_tensor.quant_method.options
    _same(torch.ops.sharq_plugin.linear(x, None, per_tensor.sharq_layer_name),
          ops.sharq_linear(x, linear_method.packed_weight(per_tensor), None, o.format, o.pattern, act_scale="tensor"))
    fp32 = _layer("s.fp32", 96, dtype=torch.float32)
    xf = heavy(7, K, torch.float32)
    o = fp32.quant_method.options
    _same(torch.ops.sharq_plugin.linear(xf, None, fp32.sharq_layer_name),
          ops.sharq_linear(xf, linear_method.packed_weight(fp32), None, o.format, o.pattern))
