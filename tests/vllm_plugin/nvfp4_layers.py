"""Layer 0 of the tiny NVFP4 fixtures (tests/fixtures/nvfp4) in vLLM's own linear layers, loaded
through their own weight loaders the way Llama's loader routes checkpoint tensors (q/k/v into
qkv_proj with shard ids "q"/"k"/"v", gate/up into gate_up_proj with 0/1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvfp4"
FIXTURE_NAMES = ["llmc-nvfp4", "llmc-nvfp4a16", "llmc-nvfp4-unfused", "llmc-nvfp4a16-ignore", "modelopt-nvfp4", "modelopt-w4a16",
                 "modelopt-nvfp4-unfused"]
H, HEAD_DIM, HEADS, KV_HEADS, INTER = 64, 32, 2, 1, 128
PREFIX = "model.layers.0."
PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
STACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
           "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
MEMBERS = {"self_attn.qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
           "self_attn.o_proj": ["self_attn.o_proj"],
           "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
           "mlp.down_proj": ["mlp.down_proj"]}


def quantization_config(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name / "config.json").read_text())["quantization_config"])


def tensors(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / name / "model.safetensors"))


def with_mapping(cfg: Any) -> Any:
    cfg.packed_modules_mapping = dict(PACKED_MODULES)
    return cfg


def build_layers(cfg: Any, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """qkv_proj, o_proj, gate_up_proj, down_proj of layer 0 with quant config ``cfg``."""
    from vllm.model_executor.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    kw = {"bias": False, "quant_config": cfg, "params_dtype": dtype}
    p = PREFIX
    return {
        "self_attn.qkv_proj": QKVParallelLinear(H, HEAD_DIM, HEADS, KV_HEADS, prefix=p + "self_attn.qkv_proj", **kw),
        "self_attn.o_proj": RowParallelLinear(HEADS * HEAD_DIM, H, prefix=p + "self_attn.o_proj", **kw),
        "mlp.gate_up_proj": MergedColumnParallelLinear(H, [INTER, INTER], prefix=p + "mlp.gate_up_proj", **kw),
        "mlp.down_proj": RowParallelLinear(INTER, H, prefix=p + "mlp.down_proj", **kw),
    }


def route_tensors(layers: dict[str, Any], ts: dict[str, torch.Tensor], prefix: str = PREFIX,
                  keep: Callable[[str, str], bool] | None = None) -> None:
    """What Llama's load_weights does for one decoder layer: each tensor under ``prefix`` (for
    which ``keep(name, suffix)``) goes through its param's weight loader, q/k/v and gate/up into
    their fused layer with their shard id (:data:`STACKED`)."""
    for name, t in ts.items():
        if not name.startswith(prefix):
            continue
        module, _, suffix = name.removeprefix(prefix).rpartition(".")
        if keep is not None and not keep(name, suffix):
            continue
        block, _, leaf = module.rpartition(".")
        if leaf in STACKED:
            fused, shard = STACKED[leaf]
            param = getattr(layers[f"{block}.{fused}"], suffix)
            param.weight_loader(param, t, shard)
        else:
            param = getattr(layers[module], suffix)
            param.weight_loader(param, t)


def load_layers(layers: dict[str, Any], ts: dict[str, torch.Tensor], process: bool = True) -> None:
    """Route layer 0's checkpoint tensors into ``layers`` through the params' weight loaders,
    then run process_weights_after_loading."""
    route_tensors(layers, ts, keep=lambda name, _suffix: "layernorm" not in name)
    if process:
        for layer in layers.values():
            layer.quant_method.process_weights_after_loading(layer)


def sharq_layers(name: str, dtype: torch.dtype = torch.bfloat16, method: str = "sharq") -> dict[str, Any]:
    """Layer 0 of fixture ``name`` served by SharQ (``from_config`` of its own
    quantization_config by the method's config class, as vLLM builds it for
    ``--quantization sharq`` / ``sharq-plus``)."""
    from sharq_vllm.vllm_plugin.presets import config_class

    layers = build_layers(with_mapping(config_class(method).from_config(quantization_config(name))), dtype)
    load_layers(layers, tensors(name))
    return layers


def sharq_weight(layer: Any) -> torch.Tensor:
    """The FP32 weight a loaded SharQ layer multiplies with (all its row blocks)."""
    from sharq_vllm.ops import dequantize_packed
    from sharq_vllm.vllm_plugin.linear_method import packed_weights

    return torch.cat([dequantize_packed(p) for p in packed_weights(layer)])
