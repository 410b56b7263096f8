"""E2M1 (FP4) element codes: round-to-nearest-even encode, decode, and 2-per-byte packing.

Code layout (OCP MX / NVFP4): bit 3 = sign, bits 0-2 = magnitude index into
``E2M1_VALUES`` = 0, 0.5, 1, 1.5, 2, 3, 4, 6. Encoding rounds to the nearest value with ties
to the even code and saturates at 6 (FP4 has no Inf/NaN). Exact contract: docs/NUMERICS.md.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Decision thresholds between consecutive magnitudes, and whether a value exactly on the
# threshold rounds up: ties go to the even code (0.25 -> 0, 0.75 -> 1.0 (code 2), 1.25 -> 1.0,
# 1.75 -> 2.0 (code 4), 2.5 -> 2.0, 3.5 -> 4.0 (code 6), 5.0 -> 4.0).
_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_TIE_ROUNDS_UP = (False, True, False, True, False, True, False)


def e2m1_encode(scaled: torch.Tensor) -> torch.Tensor:
    """Encode values already divided by their block scale; returns uint8 codes in [0, 15].

    |v| > 6 saturates to 6. The sign bit is set for every negative input, so small negatives
    that round to zero become code 8 ("-0"), as the hardware conversion does. NaN encodes as
    +0 here: callers handle non-finite rows before encoding (see reference.py).
    """
    v = scaled.float()
    mag = v.abs()
    code = torch.zeros_like(mag, dtype=torch.uint8)
    for threshold, tie_up in zip(_THRESHOLDS, _TIE_ROUNDS_UP, strict=True):
        step = mag >= threshold if tie_up else mag > threshold
        code += step.to(torch.uint8)
    sign = (torch.signbit(v) & ~torch.isnan(v)).to(torch.uint8) << 3
    return code | sign


_DECODE_TABLE = torch.tensor(
    list(E2M1_VALUES) + [-v for v in E2M1_VALUES], dtype=torch.float32
)


_DECODE_TABLES: dict[torch.device, torch.Tensor] = {}


def _decode_table(device: torch.device) -> torch.Tensor:
    # One copy per device, made on first use (vLLM's warm-up run, before CUDA-graph capture:
    # a host-to-device copy is not allowed while a graph is being captured).
    table = _DECODE_TABLES.get(device)
    if table is None:
        table = _DECODE_TABLES[device] = _DECODE_TABLE.to(device)
    return table


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15] -> float32 values."""
    return _decode_table(codes.device)[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes two per byte along the last dim: element 2i low nibble, 2i+1 high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dim, got {codes.shape[-1]}")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`."""
    low = packed & 0xF
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
