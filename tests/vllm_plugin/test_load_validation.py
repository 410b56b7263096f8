"""Issue 6 item 2 on CPU: load-time validation against real vLLM linear layers, for the cases
test_vllm_api.py / tp_worker.py do not already cover (those cover: bad options, K not a
multiple of the block for RowParallelLinear (nvfp4 and mxfp4), a TP split that straddles a
block (2 ranks), partial skips of fused layers, bf16 layers matching the reference).

Here: every supported weight dtype (bf16, fp16, fp32) gives the reference output in that dtype;
an unsupported one (float64) is refused at create_weights, before any weight is read
(online and pre-quantized); odd
output sizes are fine (SharQ blocks only K); K errors on column-parallel and fused layers
(qkv_proj, gate_up_proj) name the layer, the multiple and the fix; the smallest accepted K for
each option set is accepted.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from sharq_vllm import reference
from sharq_vllm.options import SharQOptionError, SharQOptions


@pytest.fixture(scope="module", autouse=True)
def vllm_env() -> None:
    from .vllm_env import init_vllm

    init_vllm()


def _config(**opts: object):  # type: ignore[no-untyped-def]
    from .vllm_env import sharq_config

    return sharq_config(**opts)


def _row(k: int, n: int, dtype: torch.dtype, cfg=None, prefix: str = "model.layers.1.mlp.down_proj"):  # type: ignore[no-untyped-def]
    from vllm.model_executor.layers.linear import RowParallelLinear

    return RowParallelLinear(k, n, bias=True, quant_config=cfg or _config(), prefix=prefix, params_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_supported_weight_dtypes_match_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(7)
    layer = _row(128, 40, dtype)
    w, b = torch.randn(40, 128, dtype=dtype), torch.randn(40, dtype=dtype)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(5, 128, dtype=dtype)
    y, _ = layer(x)
    assert y.dtype == dtype and y.shape == (5, 40)
    torch.testing.assert_close(y, reference.sharq_linear(x, w, b), rtol=0, atol=0)


def test_unsupported_weight_dtype_fails_before_loading() -> None:
    with pytest.raises(SharQOptionError, match=r"model.layers.1.mlp.down_proj.*float64.*--dtype"):
        _row(128, 64, torch.float64)


def test_unsupported_dtype_fails_before_loading_prequantized() -> None:
    from sharq_vllm import checkpoint
    from sharq_vllm.vllm_plugin.config import SharQConfig

    cfg = SharQConfig.from_config(checkpoint.make_quantization_config(SharQOptions()))
    assert cfg.prequantized
    with pytest.raises(SharQOptionError, match=r"float64.*--dtype"):
        _row(128, 64, torch.float64, cfg)


@pytest.mark.parametrize("n", [1, 7, 33])
def test_odd_output_sizes_are_supported(n: int) -> None:
    torch.manual_seed(n)
    layer = _row(64, n, torch.bfloat16)
    w, b = torch.randn(n, 64, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x)[0], reference.sharq_linear(x, w, b), rtol=0, atol=0)


def test_k_errors_on_column_and_fused_layers_name_the_fix() -> None:
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
    )

    bf = torch.bfloat16
    with pytest.raises(SharQOptionError, match=r"self_attn.qkv_proj.*K per shard\) is 80.*multiple of 32.*skip_layers=\[\"qkv_proj\"\]"):
        QKVParallelLinear(80, 16, 4, 2, bias=False, quant_config=_config(),
                          prefix="model.layers.0.self_attn.qkv_proj", params_dtype=bf)
    with pytest.raises(SharQOptionError, match=r"mlp.gate_up_proj.*is 100.*multiple of 32"):
        MergedColumnParallelLinear(100, [64, 64], bias=False, quant_config=_config(),
                                   prefix="model.layers.0.mlp.gate_up_proj", params_dtype=bf)
    with pytest.raises(SharQOptionError, match=r"cannot quantize layer lm_like.*is 16\b.*multiple of 32"):
        ColumnParallelLinear(16, 64, bias=False, quant_config=_config(), prefix="lm_like", params_dtype=bf)


@pytest.mark.parametrize(
    "opts",
    [{}, {"format": "mxfp4"}, {"pattern": "dense", "weight_block": 16}, {"pattern": "2:4"},
     {"format": "mxfp4", "pattern": "dense"}],
)
def test_smallest_accepted_k_is_accepted_and_half_of_it_is_not(opts: dict[str, object]) -> None:
    k = SharQOptions.from_dict(opts).required_k_multiple
    _row(k, 8, torch.bfloat16, _config(**opts))  # accepted
    _row(3 * k, 8, torch.bfloat16, _config(**opts))
    with pytest.raises(SharQOptionError, match=f"multiple of {k}"):
        _row(k + k // 2, 8, torch.bfloat16, _config(**opts))
