"""`--quantization sharq-plus` beside `sharq`, through vLLM's own code: registration, the method
vLLM resolves for every combination of flag / `--hf-overrides` / checkpoint
(``ModelConfig._verify_quantization``), the options it builds (``VllmConfig._get_quantization_config``)
and a real vLLM layer quantized under the preset. Runs against every vLLM the plugin is tested
with (test_vllm_versions.py re-runs this file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

from sharq_vllm import reference  # noqa: E402
from sharq_vllm.options import SharQOptionError, preset_defaults  # noqa: E402

from ..tiny_checkpoint import write_checkpoint  # noqa: E402

PLUS = preset_defaults("sharq-plus")
PAPER = preset_defaults("sharq")


@pytest.fixture(scope="module", autouse=True)
def vllm_env() -> None:
    import sharq_vllm

    from .vllm_env import init_vllm

    init_vllm()
    sharq_vllm.register()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-bit tiny Llama and its pre-quantized copies written with each preset."""
    from sharq_vllm.cli import main

    root = tmp_path_factory.mktemp("presets")
    src = write_checkpoint(root / "bf16")
    out = {"bf16": src}
    for preset in ("sharq", "sharq-plus"):
        out[preset] = root / preset
        assert main(["quantize", str(src), str(out[preset]), "--preset", preset, "--no-progress"]) == 0
    return out


def test_every_preset_is_a_registered_method() -> None:
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
    )

    from sharq_vllm.vllm_plugin.config import SharQConfig
    from sharq_vllm.vllm_plugin.presets import PRESET_CONFIGS

    assert set(PRESET_CONFIGS) == {"sharq", "sharq-plus"}
    for name, cls in PRESET_CONFIGS.items():
        assert get_quantization_config(name) is cls and cls.get_name() == name
        assert issubclass(cls, SharQConfig) and QUANTIZATION_METHODS.count(name) == 1
    # the preset methods are asked before sharq (presets.py: first answer wins)
    assert QUANTIZATION_METHODS.index("sharq-plus") < QUANTIZATION_METHODS.index("sharq")
    plus = PRESET_CONFIGS["sharq-plus"]()  # what vLLM builds for `--quantization sharq-plus`
    assert plus.options.to_dict() == {"quant_method": "sharq", **PLUS}
    assert plus.options.preset() == "sharq-plus" and type(plus).__name__ == "SharQPlusConfig"


def _resolve(model: Path, quantization: str | None, overrides: dict | None = None) -> tuple[str, dict, bool]:
    """(method vLLM chose, the options it built, pre-quantized?) through vLLM's own config code."""
    from vllm.config import LoadConfig, ModelConfig, VllmConfig

    hf_overrides = {"quantization_config": overrides} if overrides is not None else {}
    mc = ModelConfig(model=str(model), quantization=quantization, hf_overrides=hf_overrides,
                     skip_tokenizer_init=True)
    qc = VllmConfig._get_quantization_config(mc, LoadConfig())
    opts = qc.options.to_dict()
    opts.pop("quant_method")
    return str(mc.quantization), opts, bool(qc.prequantized)


@pytest.mark.parametrize(
    ("folder", "flag", "overrides", "method", "expected"),
    [
        ("bf16", "sharq", None, "sharq", PAPER),
        ("bf16", "sharq-plus", None, "sharq-plus", PLUS),
        # --hf-overrides still override single values, whatever quant_method the dict names
        ("bf16", "sharq-plus", {"quant_method": "sharq", "format": "mxfp4"}, "sharq-plus", {**PLUS, "format": "mxfp4"}),
        ("bf16", "sharq-plus", {"quant_method": "sharq-plus", "weight_rounding": "rtn"}, "sharq-plus",
         {**PLUS, "weight_rounding": "rtn"}),
        ("bf16", "sharq-plus", {"weight_block": 32}, "sharq-plus", {**PLUS, "weight_block": 32}),
        ("bf16", None, {"quant_method": "sharq-plus"}, "sharq-plus", PLUS),
        ("bf16", "sharq", {"quant_method": "sharq", "pattern": "2:4"}, "sharq", {**PAPER, "pattern": "2:4"}),
    ],
)
def test_online_method_and_options(folders: dict[str, Path], folder: str, flag: str | None,
                                   overrides: dict | None, method: str, expected: dict) -> None:
    assert _resolve(folders[folder], flag, overrides) == (method, expected, False)


@pytest.mark.parametrize("written_with", ["sharq", "sharq-plus"])
@pytest.mark.parametrize("flag", [None, "sharq", "sharq-plus"])
def test_prequantized_checkpoint_loads_under_any_name(folders: dict[str, Path], written_with: str,
                                                      flag: str | None) -> None:
    """The checkpoint's own options serve it, whichever SharQ name (or none) is given; the
    method keeps the name the user gave (never silently replaced)."""
    method, opts, pre = _resolve(folders[written_with], flag)
    assert pre and opts == preset_defaults(written_with)
    assert method == (flag or "sharq")


def test_conflicting_names_are_an_error(folders: dict[str, Path]) -> None:
    with pytest.raises(Exception, match=r"sharq-plus.*sharq|sharq.*sharq-plus"):
        _resolve(folders["bf16"], "sharq", {"quant_method": "sharq-plus"})


def test_sharq_plus_layer_is_the_reference_with_the_preset() -> None:
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    from .vllm_env import sharq_config

    torch.manual_seed(3)
    cfg = sharq_config(quant_method="sharq-plus")
    gate_up = MergedColumnParallelLinear(128, [64, 64], bias=False, quant_config=cfg,
                                         prefix="model.layers.0.mlp.gate_up_proj", params_dtype=torch.bfloat16)
    g, u = torch.randn(64, 128, dtype=torch.bfloat16), torch.randn(64, 128, dtype=torch.bfloat16)
    gate_up.weight.weight_loader(gate_up.weight, g, 0)
    gate_up.weight.weight_loader(gate_up.weight, u, 1)
    gate_up.quant_method.process_weights_after_loading(gate_up)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    y, _ = gate_up(x)
    want = reference.sharq_linear(x, torch.cat([g, u]), None, "nvfp4", "2:4", weight_block=16,
                                  weight_rounding="search-up")
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    with pytest.raises(SharQOptionError, match="invalid weight_block=8"):
        sharq_config(quant_method="sharq-plus", weight_block=8)
