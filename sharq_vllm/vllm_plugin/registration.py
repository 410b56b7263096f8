"""Registers the SharQ quantization methods with vLLM (``sharq`` and one per options preset,
e.g. ``sharq-plus``); called by ``sharq_vllm.register`` (the ``vllm.general_plugins`` entry point)
in every vLLM process."""

from __future__ import annotations

_registered = False


def register_sharq() -> None:
    """Idempotent: ``register_quantization_config(name)(cls)`` for every SharQ method
    (presets.method_names(): the named presets before ``sharq``), after the version check and the
    /metrics setup (metrics.py)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import register_quantization_config

    from . import compat, metrics, presets

    compat.check_vllm_version()
    metrics.setup()
    for name in presets.method_names():
        register_quantization_config(name)(presets.config_class(name))
    _registered = True
