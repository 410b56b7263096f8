"""``SharQConfig``: the vLLM ``QuantizationConfig`` for ``--quantization sharq``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from ..options import PRESETS, SharQOptionError, SharQOptions, preset_defaults
from . import compat

if TYPE_CHECKING:
    from ..checkpoint.nvfp4 import Nvfp4Source

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
        self,
        options: SharQOptions | None = None,
        *,
        prequantized: bool = False,
        nvfp4: Nvfp4Source | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.prequantized = prequantized
        #: set when the checkpoint is another tool's NVFP4 (its weights are served as stored)
        self.nvfp4 = nvfp4
        if options is None:
            options = SharQOptions.from_dict(kwargs, preset=self.PRESET)
        elif kwargs:
            raise SharQOptionError("sharq: pass either options or keyword options, not both")
        self.options = options
        logger.info(
            "sharq: SharQ config %s (%s)", options.summary(),
            f"weights from a {nvfp4.label}" if nvfp4 is not None
            else "pre-quantized checkpoint" if prequantized else "online quantization at load",
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
        if config.get("quant_method") not in (None, "", *PRESETS):
            return cls.from_nvfp4_config(config)
        return cls(SharQOptions.from_dict(config, preset=cls.PRESET))

    @classmethod
    def from_nvfp4_config(cls, config: dict[str, Any]) -> SharQConfig:
        """``--quantization <this method>`` on another tool's checkpoint: its NVFP4 weights as
        stored (``weight_block`` 16; the tools round to nearest: ``weight_rounding`` ``rtn``), the activation
        options of this method's preset (:data:`sharq_vllm.options.PRESETS`: ``sharq`` nvfp4
        4:8-pairs, ``sharq-plus`` nvfp4 2:4), its ignore / exclude_modules list as
        ``skip_layers``. Anything SharQ cannot serve raises CheckpointError naming the reason
        (checkpoint.nvfp4.parse_nvfp4_config)."""
        from sharq_vllm.checkpoint import nvfp4

        source = nvfp4.parse_nvfp4_config(config)
        skip = [*preset_defaults(cls.PRESET)["skip_layers"], *source.skip_layers]
        options = SharQOptions.from_dict(
            {"weight_block": nvfp4.NVFP4_BLOCK, "weight_rounding": "rtn", "skip_layers": skip}, preset=cls.PRESET
        )
        return cls(options, nvfp4=source)

    @classmethod
    def override_quantization_method(
        cls, hf_quant_cfg: dict[str, Any], user_quant: str | None, hf_config: Any = None
    ) -> Any:
        method = hf_quant_cfg.get("quant_method")
        if method == "sharq":
            return "sharq"
        if user_quant == "sharq" and method not in PRESETS:
            # `--quantization sharq --hf-overrides '{"quantization_config": {...}}'` without
            # quant_method in the dict (vLLM versions that default it to None), and any other
            # tool's quantized checkpoint: the user asked for SharQ, so it is never silently
            # replaced by another method (vLLM's modelopt_fp4 claims ModelOpt NVFP4 whatever was
            # asked); from_config serves an NVFP4 checkpoint or says why it cannot. Another
            # preset's name in the config is vLLM's mismatch error. The preset methods
            # (presets.py) ask this for their own name.
            return "sharq"
        return None

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Validate a local pre-quantized or NVFP4 checkpoint (tensor names, shapes, dtypes)
        before any weight is loaded; a no-op for 16-bit checkpoints."""
        if self.nvfp4 is not None:
            from sharq_vllm.checkpoint.nvfp4 import preflight_nvfp4

            info = preflight_nvfp4(model_name, self.nvfp4)
            logger.info(
                "sharq: serving the FP4 weights of a %s as stored (SharQ weight_block 16 payloads%s) "
                "with SharQ activations (%s %s, act_scale=%s); the checkpoint's static input scales "
                "(%s) are not used: SharQ's activation scales are dynamic",
                self.nvfp4.label, f"; {info.summary()}" if info is not None else "",
                self.options.format, self.options.pattern, self.options.act_scale, self.nvfp4.input_scale,
            )
        elif getattr(self, "prequantized", False):
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
            vllm_config = compat.current_vllm_config()
            if vllm_config is not None:
                from .fusion import install

                install(vllm_config)  # RMSNorm + preparation in one kernel (fusion.py)
            if self.nvfp4 is not None:
                from .nvfp4 import SharQNvfp4LinearMethod

                return SharQNvfp4LinearMethod(self.options, prefix, self.nvfp4, preset=self.PRESET)
            if getattr(self, "prequantized", False):
                from .prequantized import SharQPrequantizedLinearMethod

                return SharQPrequantizedLinearMethod(self.options, prefix)
            from .linear_method import SharQLinearMethod

            return SharQLinearMethod(self.options, prefix)
        # embeddings / lm_head (VocabParallelEmbedding, ParallelLMHead), attention, MoE:
        # not quantized by SharQ (lm_head and embeddings stay 16-bit by design)
        return None
