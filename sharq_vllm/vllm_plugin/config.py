"""``SharQConfig``: the vLLM ``QuantizationConfig`` for ``--quantization sharq``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from ..options import SharQOptionError, SharQOptions

logger = init_logger("vllm.sharq")

__all__ = ["SharQConfig"]


class SharQConfig(QuantizationConfig):
    """SharQ W4A4 (sparse FP4 backbone + dense FP4 residual), quantized online at load.

    Built with no arguments for a plain 16-bit checkpoint (``get_config_filenames()`` is
    empty), or by :meth:`from_config` from a ``quantization_config`` dict (the checkpoint's,
    or one given with ``--hf-overrides``). Invalid options raise :class:`SharQOptionError`.
    """

    #: loads checkpoints written by ``sharq-vllm quantize`` (payload tensors in the files)
    SUPPORTS_PREQUANTIZED = True
    #: the options preset this method's defaults come from (sharq_vllm.options.PRESETS; the
    #: other presets' methods are subclasses: vllm_plugin/presets.py)
    PRESET: ClassVar[str] = "sharq"

    def __init__(
        self, options: SharQOptions | None = None, *, prequantized: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        self.prequantized = prequantized
        if options is None:
            options = SharQOptions.from_dict(kwargs, preset=self.PRESET)
        elif kwargs:
            raise SharQOptionError("sharq: pass either options or keyword options, not both")
        self.options = options
        logger.info(
            "sharq: SharQ config %s (%s)", options.summary(),
            "pre-quantized checkpoint" if prequantized else "online quantization at load",
        )

    def __repr__(self) -> str:
        return f"SharQConfig({self.options.summary()})"

    # -- vLLM API ---------------------------------------------------------------------------
    @classmethod
    def get_name(cls) -> str:  # type: ignore[override]
        return "sharq"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        # The reference path runs on any GPU; kernels (sharq_vllm.ops) decide their own.
        return 70

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SharQConfig:
        from sharq_vllm import checkpoint

        if checkpoint.is_prequantized_config(config):
            # a checkpoint written by `sharq-vllm quantize` (its config carries a version)
            return cls(checkpoint.read_quantization_config({"quantization_config": config}),
                       prequantized=True)
        return cls(SharQOptions.from_dict(config, preset=cls.PRESET))

    @classmethod
    def override_quantization_method(
        cls, hf_quant_cfg: dict[str, Any], user_quant: str | None, hf_config: Any = None
    ) -> Any:
        method = hf_quant_cfg.get("quant_method")
        if method == "sharq":
            return "sharq"
        if user_quant == "sharq" and method in (None, ""):
            # `--quantization sharq --hf-overrides '{"quantization_config": {...}}'` without
            # quant_method in the dict (vLLM versions that default it to None)
            return "sharq"
        return None

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Validate a local pre-quantized checkpoint (tensor names, shapes, dtypes) before any
        weight is loaded; a no-op for 16-bit checkpoints."""
        if getattr(self, "prequantized", False):
            from sharq_vllm import checkpoint

            checkpoint.preflight(model_name)

    def is_layer_skipped(self, prefix: str) -> bool:
        """Whether the layer ``prefix`` stays 16-bit: :meth:`SharQOptions.is_layer_skipped` (the
        rule the checkpoint tools share) with the layers vLLM fused into it as its members."""
        last = prefix.rsplit(".", 1)[-1]
        base = prefix[: -len(last)]
        members = [base + s for s in self.packed_modules_mapping.get(last, ())]
        return self.options.is_layer_skipped(prefix, members)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, LinearBase):
            if self.is_layer_skipped(prefix):
                logger.info("sharq: %s stays 16-bit (skip_layers)", prefix)
                return UnquantizedLinearMethod()
            if getattr(self, "prequantized", False):
                from .prequantized import SharQPrequantizedLinearMethod

                return SharQPrequantizedLinearMethod(self.options, prefix)
            from .linear_method import SharQLinearMethod

            return SharQLinearMethod(self.options, prefix)
        # embeddings / lm_head (VocabParallelEmbedding, ParallelLMHead), attention, MoE:
        # not quantized by SharQ (lm_head and embeddings stay 16-bit by design)
        return None
