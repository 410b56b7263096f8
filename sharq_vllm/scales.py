"""Block-scale codes: E4M3 (NVFP4, SharQ weights) and E8M0 (MXFP4).

E4M3 uses torch's ``float8_e4m3fn`` conversion (round to nearest even, subnormals down to
2^-9) after clamping to [0, 448], because the conversion itself does not saturate. E8M0 is a
biased power-of-two exponent stored as uint8 (code c means 2^(c-127); 255 would be NaN and is
never produced).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
E8M0_BIAS = 127


def e4m3_encode(scale: torch.Tensor) -> torch.Tensor:
    """Non-negative FP32 scales -> float8_e4m3fn, saturating at 448 (NaN stays NaN)."""
    return scale.float().clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    return codes.float()


def e8m0_encode(exponent: torch.Tensor) -> torch.Tensor:
    """Integer exponents (any int/float dtype holding integers) -> uint8 E8M0 codes.

    Exponents are clamped to the representable range [-127, 127].
    """
    return (exponent.clamp(-E8M0_BIAS, E8M0_BIAS).to(torch.int32) + E8M0_BIAS).to(torch.uint8)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 codes -> float32 powers of two (exact, including 2^-127)."""
    return torch.ldexp(torch.ones_like(codes, dtype=torch.float32), codes.to(torch.int32) - E8M0_BIAS)
