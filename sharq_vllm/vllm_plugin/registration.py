"""Registers ``sharq`` with vLLM; called by ``sharq_vllm.register`` (the
``vllm.general_plugins`` entry point) in every vLLM process."""

from __future__ import annotations

_registered = False


def register_sharq() -> None:
    """Idempotent: ``register_quantization_config("sharq")(SharQConfig)``."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import register_quantization_config

    from .config import SharQConfig

    register_quantization_config("sharq")(SharQConfig)
    _registered = True
