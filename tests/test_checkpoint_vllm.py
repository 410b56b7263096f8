"""Loading a pre-quantized SharQ checkpoint through vLLM's own fused linear layers and weight
loaders (QKVParallelLinear, MergedColumnParallelLinear, RowParallelLinear), at TP=1 and TP=2
(ranks emulated in one process): the loaded payload equals online quantization of the 16-bit
weights, bit for bit. Also the reference wiring for the plugin's pre-quantized linear method:
``create_packed_parameters`` in create_weights, ``finalize_packed`` in
process_weights_after_loading.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

from safetensors.torch import load_file, save_file
from vllm.model_executor.layers import linear as vllm_linear
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from sharq_vllm import reference
from sharq_vllm.checkpoint import CheckpointError, preflight
from sharq_vllm.checkpoint.format import PAYLOAD_SUFFIXES
from sharq_vllm.convert import quantize_checkpoint
from sharq_vllm.options import SharQOptions
from sharq_vllm.vllm_plugin.prequantized import create_packed_parameters, finalize_packed

from .tiny_checkpoint import llama_config, write_checkpoint
from .vllm_plugin.nvfp4_layers import route_tensors

OPTS = SharQOptions()
H, INTER, NH, KV, HD = 64, 128, 4, 2, 16


class PrequantizedMethod(LinearMethodBase):
    """Minimal pre-quantized SharQ linear method: what the plugin's must do at load time."""

    def __init__(self, options: SharQOptions, prefix: str) -> None:
        self.options = options
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        create_packed_parameters(
            layer,
            prefix=self.prefix,
            input_size_per_partition=input_size_per_partition,
            output_partition_sizes=output_partition_sizes,
            input_size=input_size,
            options=self.options,
            weight_loader=extra_weight_attrs["weight_loader"],
        )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        layer.sharq_payload = finalize_packed(layer, prefix=self.prefix, options=self.options)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return reference.apply_linear(x, layer.sharq_payload, bias, self.options.format, self.options.pattern)


class PrequantizedConfig(QuantizationConfig):
    def __init__(self, options: SharQOptions) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def get_name(cls) -> Any:
        return "sharq-test"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PrequantizedConfig:
        return cls(SharQOptions.from_dict(config))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        return PrequantizedMethod(self.options, prefix) if isinstance(layer, LinearBase) else None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-load")
    src = write_checkpoint(root / "src", llama_config(hidden=H, inter=INTER, heads=NH, kv_heads=KV, layers=1))
    dst = root / "dst"
    quantize_checkpoint(src, dst, OPTS, progress=False)
    return src, dst, load_file(str(src / "model.safetensors")), load_file(str(next(dst.glob("*.safetensors"))))


@pytest.fixture
def tp(monkeypatch):
    """Emulate tensor-parallel rank r of size n in one process."""
    from vllm.model_executor import parameter as vllm_parameter

    monkeypatch.setattr(
        vllm_linear, "WEIGHT_LOADER_V2_SUPPORTED", [*vllm_linear.WEIGHT_LOADER_V2_SUPPORTED, "PrequantizedMethod"]
    )

    def set_tp(rank: int, size: int) -> None:
        for mod in (vllm_linear, vllm_parameter):
            monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", lambda: rank)
            monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", lambda: size)

    return set_tp


def _layers(cfg: PrequantizedConfig) -> dict[str, torch.nn.Module]:
    p = "model.layers.0."
    kw = {"bias": False, "quant_config": cfg, "params_dtype": torch.bfloat16}
    return {
        "self_attn.qkv_proj": QKVParallelLinear(H, HD, NH, KV, prefix=p + "self_attn.qkv_proj", **kw),
        "self_attn.o_proj": RowParallelLinear(NH * HD, H, prefix=p + "self_attn.o_proj", **kw),
        "mlp.gate_up_proj": MergedColumnParallelLinear(H, [INTER, INTER], prefix=p + "mlp.gate_up_proj", **kw),
        "mlp.down_proj": RowParallelLinear(INTER, H, prefix=p + "mlp.down_proj", **kw),
    }


def _load(layers: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """What LlamaModel.load_weights does for these tensors."""
    route_tensors(layers, tensors, keep=lambda name, suffix: name not in skip and suffix in PAYLOAD_SUFFIXES)
    for layer in layers.values():
        layer.quant_method.process_weights_after_loading(layer)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


@pytest.mark.parametrize("tp_size", [1, 2])
def test_vllm_loads_checkpoint_bit_identical_to_online(ckpt, tp, tp_size):
    _, _, src, dst = ckpt
    p = "model.layers.0."
    for rank in range(tp_size):
        tp(rank, tp_size)
        layers = _layers(PrequantizedConfig(OPTS))
        _load(layers, dst)

        def rows(t: torch.Tensor, rank: int = rank) -> torch.Tensor:
            n = t.shape[0] // tp_size
            return t[rank * n : (rank + 1) * n]

        def cols(t: torch.Tensor, rank: int = rank) -> torch.Tensor:
            n = t.shape[1] // tp_size
            return t[:, rank * n : (rank + 1) * n]

        expect = {
            "self_attn.qkv_proj": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], rows),
            "mlp.gate_up_proj": (["mlp.gate_proj", "mlp.up_proj"], rows),
            "self_attn.o_proj": (["self_attn.o_proj"], cols),
            "mlp.down_proj": (["mlp.down_proj"], cols),
        }
        for fused, (members, shard) in expect.items():
            full = torch.cat([src[f"{p}{m}.weight"] for m in members])
            amax = full.float().abs().amax().reshape(1)  # online: MAX-all-reduced over TP
            w_rank = torch.cat([shard(src[f"{p}{m}.weight"]) for m in members])
            online = reference.quantize_weight(w_rank, tensor_amax=amax)
            got = layers[fused].sharq_payload
            assert torch.equal(_bits(got.codes), online.codes), (fused, rank)
            assert torch.equal(_bits(got.block_scales), _bits(online.block_scales)), (fused, rank)
            assert torch.equal(got.tensor_scale, online.tensor_scale.reshape(1)), (fused, rank)
            assert not hasattr(layers[fused], "weight_packed")
        # and the layer computes with it
        x = torch.randn(3, H, dtype=torch.bfloat16)
        y = layers["self_attn.qkv_proj"](x)[0]
        assert y.shape == (3, (NH + 2 * KV) * HD // tp_size)


def test_vllm_load_errors_name_the_tensor(ckpt, tp):
    _, _, _, dst = ckpt
    tp(0, 1)
    p = "model.layers.0."
    bad = dict(dst)
    bad[p + "self_attn.k_proj.weight_scale"] = bad[p + "self_attn.k_proj.weight_scale"].float()
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.self_attn\.k_proj\.weight_scale: dtype float32"):
        _load(_layers(PrequantizedConfig(OPTS)), bad)

    bad = dict(dst)
    bad[p + "mlp.up_proj.weight_packed"] = bad[p + "mlp.up_proj.weight_packed"][:, :16].contiguous()
    with pytest.raises(CheckpointError, match=r"mlp\.up_proj\.weight_packed: shape \[128, 16\], expected \[\*, 32\]"):
        _load(_layers(PrequantizedConfig(OPTS)), bad)

    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.self_attn\.v_proj\.weight_tensor_scale was not loaded"):
        _load(_layers(PrequantizedConfig(OPTS)), dst, skip=(p + "self_attn.v_proj.weight_tensor_scale",))

    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.gate_proj\.weight_scale was not loaded"):
        _load(_layers(PrequantizedConfig(OPTS)), dst, skip=(p + "mlp.gate_proj.weight_scale",))

    bad = dict(dst)
    bad[p + "mlp.up_proj.weight_tensor_scale"] = bad[p + "mlp.up_proj.weight_tensor_scale"] * 2
    with pytest.raises(CheckpointError, match=r"gate_up_proj\.weight_tensor_scale: the fused shards carry different"):
        _load(_layers(PrequantizedConfig(OPTS)), bad)

    # a checkpoint quantized with weight_block=16 served with a config saying 32
    with pytest.raises(CheckpointError, match=r"weight_scale: shape \[\d+, \d+\], expected \[\*, \d+\] \(wrong input size or weight block"):
        bad = dict(dst)
        for k in [k for k in bad if k.endswith(".weight_scale")]:
            bad[k] = bad[k].repeat_interleave(2, dim=1)
        _load(_layers(PrequantizedConfig(OPTS)), bad)


def test_preflight(ckpt, tmp_path):
    src, dst, _, tensors = ckpt
    info = preflight(dst)
    assert info is not None and len(info.layers) == 7
    assert preflight(src) is None  # 16-bit: online quantization
    assert preflight("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # not a local folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((dst / "config.json").read_text())
    t = dict(tensors)
    del t["model.layers.0.mlp.down_proj.weight_scale"]
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.down_proj\.weight_scale is missing"):
        preflight(bad)
