"""One vLLM quantization method per options preset: ``--quantization sharq-plus`` beside ``sharq``.

Each preset of :data:`sharq_vllm.options.PRESETS` other than the paper's ``sharq`` gets a
:class:`SharQConfig` subclass whose name is the preset's and whose defaults are its values;
options given with ``--hf-overrides '{"quantization_config": {...}}'`` still override them one by
one. Everything else (pre-quantized checkpoints, the skip rule, the linear methods) is
``SharQConfig``'s, so a checkpoint written with any preset loads under any SharQ name or none: its
``quantization_config`` holds every value explicitly.

vLLM picks the method for a checkpoint that has a ``quantization_config`` by asking every
registered method's ``override_quantization_method`` in registration order, first answer wins
(``ModelConfig._verify_quantization``). A preset method answers only when the user named it, and
then for every config ``sharq`` itself would take, so ``--quantization sharq-plus`` is never
replaced by ``sharq``; registration.py registers the preset methods before ``sharq``.
"""

from __future__ import annotations

from typing import Any

from ..options import DEFAULT_PRESET, PRESETS
from .config import SharQConfig

__all__ = ["PRESET_CONFIGS", "config_class", "method_names"]


def _preset_config(preset: str) -> type[SharQConfig]:
    class PresetConfig(SharQConfig):
        PRESET = preset

        @classmethod
        def get_name(cls) -> str:  # type: ignore[override]
            return cls.PRESET

        @classmethod
        def override_quantization_method(
            cls, hf_quant_cfg: dict[str, Any], user_quant: str | None, hf_config: Any = None
        ) -> Any:
            if user_quant != cls.PRESET:
                return None
            if hf_quant_cfg.get("quant_method") in (cls.PRESET, None, ""):
                return cls.PRESET
            # whatever `--quantization sharq` would serve, this preset serves under its own name
            base = SharQConfig.override_quantization_method(hf_quant_cfg, DEFAULT_PRESET, hf_config)
            return cls.PRESET if base is not None else None

    name = "".join(part.capitalize() for part in preset.replace("-", "_").split("_")).replace("Sharq", "SharQ")
    PresetConfig.__name__ = PresetConfig.__qualname__ = f"{name}Config"
    PresetConfig.__doc__ = f"``--quantization {preset}``: SharQConfig with the {preset!r} preset's defaults."
    return PresetConfig


#: method name -> its QuantizationConfig class (``sharq`` is SharQConfig itself)
PRESET_CONFIGS: dict[str, type[SharQConfig]] = {
    name: SharQConfig if name == DEFAULT_PRESET else _preset_config(name) for name in PRESETS
}


def config_class(name: str) -> type[SharQConfig]:
    return PRESET_CONFIGS[name]


def method_names() -> list[str]:
    """The vLLM method names in registration order: the named presets first, ``sharq`` last
    (see the module docstring)."""
    return [n for n in PRESET_CONFIGS if n != DEFAULT_PRESET] + [DEFAULT_PRESET]
