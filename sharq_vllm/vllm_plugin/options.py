"""Deprecated location of the options model: it is :mod:`sharq_vllm.options` (the whole
package's settings, not the plugin's). Re-exported here so that existing imports keep working."""

from ..options import (
    ACT_SCALES,
    DEFAULTS,
    FORMATS,
    OPTION_DOCS,
    PATTERNS,
    WEIGHT_BLOCKS,
    WEIGHT_ROUNDINGS,
    SharQOptionError,
    SharQOptions,
)

__all__ = [
    "ACT_SCALES",
    "DEFAULTS",
    "FORMATS",
    "OPTION_DOCS",
    "PATTERNS",
    "WEIGHT_BLOCKS",
    "WEIGHT_ROUNDINGS",
    "SharQOptionError",
    "SharQOptions",
]
