"""Loading SharQ checkpoints with transformers: ``import sharq_vllm.hf`` first.

    import sharq_vllm.hf  # registers the "sharq" quantization method with transformers
    model = AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32)

Importing this module registers a ``sharq`` quantization config and quantizer with transformers
(``register_quantization_config`` / ``register_quantizer``; idempotent). From then on
``from_pretrained`` of a checkpoint written by ``sharq-vllm quantize`` gives the *reference
model*: every quantized linear's ``weight`` is ``sharq_vllm.reference.dequantize_weight`` of its
payload (``weight_packed``, ``weight_scale``, ``weight_tensor_scale``), rounded once to the
model's dtype (exact with ``dtype=torch.float32``); skipped layers, embeddings, norms and
lm_head load unchanged. The model is an ordinary transformers model afterwards (its
``quantization_config`` is dropped, ``is_quantized`` is False); activations are not quantized
(SharQ's activation path runs in vLLM, or ``sharq_vllm.reference.sharq_activation``).

A payload that does not match the model or the config (dtype, shape, block, missing tensor, a
quantized layer the checkpoint leaves without payload) makes ``from_pretrained`` raise; no
weight is ever left randomly initialised by this quantizer.

Without the import, transformers (5.19) does not know ``sharq``: it logs "Unknown quantization
type, got sharq ... we will skip the quantization" and initialises every quantized linear
randomly, without an exception. transformers discovers quantizers only by registration (no
entry points), and nothing in config.json can make it fail while keeping the checkpoint loadable
by vLLM (docs/CHECKPOINTS.md, "transformers").

This module imports transformers; ``import sharq_vllm`` (and vLLM's plugin entry point) does
not import it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from .checkpoint.format import (
    PACKED,
    SCALE,
    TENSOR_SCALE,
    CheckpointError,
    is_module_skipped,
    is_quantizable_linear,
    payload_from_tensors,
    read_quantization_config,
)
from .checkpoint.validate import validate_loaded
from .options import SharQOptions
from .reference import dequantize_weight

__all__ = ["METHOD", "SharQHfConfig", "SharQHfQuantizer", "register"]

METHOD = "sharq"
_SOURCES = [f"{PACKED}$", f"{SCALE}$", f"{TENSOR_SCALE}$"]


class SharQHfConfig(QuantizationConfigMixin):
    """The checkpoint's ``quantization_config`` (checked as the vLLM plugin checks it: unknown
    options, a newer checkpoint version and a config without ``version`` are errors)."""

    def __init__(self, **config: Any) -> None:
        config = {"quant_method": METHOD, **config}
        if "version" not in config:
            raise CheckpointError("sharq: this quantization_config has no version: not a checkpoint written "
                                  "by `sharq-vllm quantize` (transformers cannot quantize on the fly)")
        options = read_quantization_config({"quantization_config": config}, where="quantization_config")
        assert options is not None
        self.options = options
        self.version = config["version"]
        self.quant_method = METHOD  # type: ignore[assignment]  # transformers' enum lacks our name
        self.dequantize = True  # transformers then drops quantization_config after loading

    def to_dict(self) -> dict[str, Any]:
        return {**self.options.to_dict(), "version": self.version}


class _Dequantize(ConversionOps):
    """weight_packed + weight_scale + weight_tensor_scale -> weight (reference dequantization)."""

    def __init__(self, quantizer: SharQHfQuantizer) -> None:
        self.quantizer = quantizer

    def __deepcopy__(self, memo: dict[int, Any]) -> _Dequantize:
        # transformers copies the converter per layer; every copy reports to the one quantizer
        return _Dequantize(self.quantizer)

    def convert(self, input_dict: dict[str, Any], source_patterns: list[str] | None = None,
                target_patterns: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        full_layer_name: str | None = kwargs.get("full_layer_name")
        model: Any = kwargs.get("model")
        if full_layer_name is None or model is None:
            raise CheckpointError("sharq: transformers gave no layer name / model to the conversion")
        module = full_layer_name.removesuffix(".weight")

        def one(pattern: str) -> torch.Tensor:
            t = input_dict.get(pattern)
            if isinstance(t, list):
                t = t[0] if len(t) == 1 else None
            if t is None:
                raise CheckpointError(f"sharq: tensor {module}.{pattern.rstrip('$')} is missing from the checkpoint")
            return t

        packed, scale, ts = one(_SOURCES[0]), one(_SOURCES[1]), one(_SOURCES[2])
        target = model.get_submodule(module).weight
        n, k = int(packed.shape[0]), int(packed.shape[-1]) * 2
        if packed.dim() != 2 or tuple(target.shape) != (n, k):
            raise CheckpointError(f"sharq: tensor {module}.{PACKED}: shape {list(packed.shape)} does not fit the "
                                  f"model's weight {list(target.shape)} (packed [N, K/2])")
        options = self.quantizer.options
        validate_loaded(module, {PACKED: packed, SCALE: scale, TENSOR_SCALE: ts}, n, k, options)
        w = dequantize_weight(payload_from_tensors(packed, scale, ts, options.weight_block))
        self.quantizer.converted.add(module)
        return {full_layer_name: w.to(target.dtype)}


class SharQHfQuantizer(HfQuantizer):
    """Pre-quantized SharQ checkpoints only; dequantizes to the reference model at load."""

    requires_calibration = True

    def __init__(self, quantization_config: SharQHfConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.options: SharQOptions = quantization_config.options
        self.converted: set[str] = set()

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not self.pre_quantized:
            raise CheckpointError("sharq: transformers cannot quantize a model to SharQ; use "
                                  "`sharq-vllm quantize` (or vLLM's --quantization sharq)")

    def get_weight_conversions(self) -> list[WeightConverter]:
        return [WeightConverter(source_patterns=list(_SOURCES), target_patterns="weight",
                                operations=[_Dequantize(self)])]

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        self.converted.clear()
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        """Every decoder linear SharQ quantizes (and skip_layers does not skip) must have come
        from its payload: transformers would otherwise leave it randomly initialised."""
        expected = [name for name, mod in model.named_modules()
                    if isinstance(mod, torch.nn.Linear) and is_quantizable_linear(name)
                    and not is_module_skipped(self.options, name)]
        missing = [name for name in expected if name not in self.converted]
        if missing:
            raise CheckpointError(
                f"sharq: {len(missing)} quantized linear layer(s) have no SharQ payload in the checkpoint "
                f"(e.g. {missing[0]}.{PACKED}); they would be left randomly initialised"
            )
        return model

    def is_serializable(self) -> bool:  # a method in transformers 5.19 (is_trainable is a property)
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Register ``sharq`` with transformers (once; a no-op when already ours)."""
    if AUTO_QUANTIZER_MAPPING.get(METHOD) is SharQHfQuantizer:
        return
    if METHOD in AUTO_QUANTIZER_MAPPING or METHOD in AUTO_QUANTIZATION_CONFIG_MAPPING:
        raise RuntimeError(f"transformers already has another quantization method named {METHOD!r}")
    register_quantization_config(METHOD)(SharQHfConfig)
    register_quantizer(METHOD)(SharQHfQuantizer)


register()
