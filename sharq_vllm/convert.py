"""Deprecated location of the offline quantizer: it is :mod:`sharq_vllm.checkpoint.writer`
(re-exported here so that existing imports keep working)."""

from .checkpoint.writer import (
    DTYPES,
    QuantizeReport,
    numerics_digest,
    quantize_checkpoint,
    resolve_dtype,
)

__all__ = ["DTYPES", "QuantizeReport", "numerics_digest", "quantize_checkpoint", "resolve_dtype"]
