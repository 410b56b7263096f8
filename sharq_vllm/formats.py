"""Block-scaled FP4 formats: NVFP4, MXFP4 and the SharQ weight payload.

A format quantizes ``block`` consecutive values along the last dim with one scale:

==========  =====  ===========  ===================================================
format      block  block scale  tensor scale
==========  =====  ===========  ===================================================
nvfp4       16     E4M3         FP32, amax / (6 * 448) over the caller's scale group
mxfp4       32     E8M0         none (OCP MX: 2^(floor(log2 block_amax) - 2))
sharq-w32   32     E4M3         FP32, as nvfp4 (the paper's shared weight payload)
sharq-w16   16     E4M3         FP32 ("sharq-plus": 16-block weight scales)
==========  =====  ===========  ===================================================

Bit-level contract (operation order matters for bit-exact kernels): docs/NUMERICS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fp4 import E2M1_MAX, e2m1_decode, e2m1_encode, pack_nibbles, unpack_nibbles
from .scales import E4M3_MAX, e4m3_encode, e8m0_decode, e8m0_encode

# amax / TENSOR_SCALE_DIVISOR puts the scale group's largest value at E4M3's top (448) after
# division by E2M1's top (6).
TENSOR_SCALE_DIVISOR = E2M1_MAX * E4M3_MAX  # 2688.0


@dataclass(frozen=True)
class BlockFormat:
    name: str
    block: int
    scale_kind: str  # "e4m3" (with an FP32 tensor scale) | "e8m0" (none)


NVFP4 = BlockFormat("nvfp4", 16, "e4m3")
MXFP4 = BlockFormat("mxfp4", 32, "e8m0")
SHARQ_W32 = BlockFormat("sharq-w32", 32, "e4m3")
SHARQ_W16 = BlockFormat("sharq-w16", 16, "e4m3")

ACTIVATION_FORMATS = {"nvfp4": NVFP4, "mxfp4": MXFP4}
WEIGHT_FORMATS = {32: SHARQ_W32, 16: SHARQ_W16}


def activation_format(name: str) -> BlockFormat:
    try:
        return ACTIVATION_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown FP4 format {name!r}; expected one of {sorted(ACTIVATION_FORMATS)}"
        ) from None


@dataclass
class QuantizedBlocks:
    """Packed FP4 codes with their scales; the tensor every kernel consumes.

    codes:        uint8 [..., K/2], two E2M1 codes per byte, low nibble first
    block_scales: [..., K/block]: float8_e4m3fn (E4M3 formats) or uint8 E8M0 codes
    tensor_scale: FP32 broadcastable to [..., 1] (E4M3 formats), None for MXFP4
    block:        values per scale along K (may exceed ``fmt.block`` for a sparse backbone)
    """

    codes: torch.Tensor
    block_scales: torch.Tensor
    tensor_scale: torch.Tensor | None
    fmt: BlockFormat
    block: int

    def unpacked_codes(self) -> torch.Tensor:
        return unpack_nibbles(self.codes)

    def decode_scales(self) -> torch.Tensor:
        """Per-block FP32 dequantization scale d (value = e2m1 * d)."""
        if self.fmt.scale_kind == "e8m0":
            return e8m0_decode(self.block_scales)
        assert self.tensor_scale is not None
        return self.block_scales.float() * self.tensor_scale

    def dequantize(self) -> torch.Tensor:
        values = e2m1_decode(self.unpacked_codes())
        blocks = values.reshape(*values.shape[:-1], values.shape[-1] // self.block, self.block)
        return (blocks * self.decode_scales().unsqueeze(-1)).reshape(values.shape)


def tensor_scale_of(amax: torch.Tensor) -> torch.Tensor:
    """t = amax / 2688 as an IEEE FP32 division on every device. (torch on CUDA turns
    `tensor / python_scalar` into `tensor * (1 / scalar)`, which differs from the division in
    about 21% of bf16 amax values; dividing by a same-device tensor keeps the true division.)"""
    a = amax.float()
    return a / torch.full_like(a, TENSOR_SCALE_DIVISOR)


def check_block_multiple(k: int, block: int, what: str) -> None:
    if k % block:
        raise ValueError(
            f"sharq: {what} has last dim {k}, which is not a multiple of the block size {block}"
        )


def _e4m3_block_scales(
    blocks: torch.Tensor, tensor_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN E4M3 block scales and the FP32 dequantization scale d = fp32(s) * t."""
    block_amax = blocks.abs().amax(-1)
    denom = tensor_scale * 6.0
    ratio = torch.where(denom > 0, block_amax / denom, torch.zeros_like(block_amax))
    scales = e4m3_encode(ratio)
    return scales, scales.float() * tensor_scale


def _encode_blocks(blocks: torch.Tensor, dequant_scale: torch.Tensor) -> torch.Tensor:
    # One FP32 reciprocal per block, then a multiply per value (as NVIDIA's NVFP4 quantizers
    # do): kernels avoid a division per element and still match bit for bit.
    d = dequant_scale.unsqueeze(-1)
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    return e2m1_encode(blocks * inv)


def quantize_blocks(
    x: torch.Tensor,
    fmt: BlockFormat,
    *,
    block: int | None = None,
    amax: torch.Tensor | None = None,
) -> QuantizedBlocks:
    """Quantize ``x`` [..., K] block-wise along K.

    block: values per scale (defaults to the format's; a sparse backbone uses twice that).
    amax:  the tensor-scale group's amax, broadcastable to [..., 1]; defaults to per row.
           Ignored by MXFP4.
    """
    block = block or fmt.block
    k = x.shape[-1]
    check_block_multiple(k, block, f"{fmt.name} input")
    xf = x.float()
    blocks = xf.reshape(*xf.shape[:-1], k // block, block)
    if fmt.scale_kind == "e8m0":
        block_amax = blocks.abs().amax(-1)
        _, exponent = torch.frexp(block_amax)  # block_amax = m * 2^exponent, m in [0.5, 1)
        shared_exp = torch.where(block_amax > 0, exponent - 1 - 2, torch.full_like(exponent, -127))
        scales = e8m0_encode(shared_exp)
        codes = _encode_blocks(blocks, e8m0_decode(scales))
        tensor_scale = None
    else:
        if amax is None:
            amax = xf.abs().amax(-1, keepdim=True)
        tensor_scale = tensor_scale_of(amax)
        scales, dequant_scale = _e4m3_block_scales(blocks, tensor_scale)
        codes = _encode_blocks(blocks, dequant_scale)
    packed = pack_nibbles(codes.reshape(*xf.shape[:-1], k))
    return QuantizedBlocks(packed, scales, tensor_scale, fmt, block)


# Calibration-free weight roundings that search each block's E4M3 scale code (docs/NUMERICS.md):
# name -> (first code, offsets tried from it). "search" tries the RTN code -4 .. +1 and mostly
# ends on smaller scales, which clip the block's largest weight; "search-up" never goes below
# the RTN scale (finer steps for the rest of the block are not bought by clipping the largest
# weight, to which the models proved more sensitive; docs/ACCURACY.md).
SCALE_SEARCHES: dict[str, tuple[str, range]] = {
    "search": ("rtn", range(1, -5, -1)),
    "search-up": ("rtn", range(6, -1, -1)),
}


def search_e4m3_block_scales(
    blocks: torch.Tensor, tensor_scale: torch.Tensor, offsets: range = range(1, -5, -1),
    start: str = "rtn",
) -> torch.Tensor:
    """Calibration-free scale search: per block, the E4M3 code ``start + offset`` whose
    quantization has the least squared error. ``start`` is the RTN code ("rtn") or the smallest
    code with ``6 * fp32(scale) * tensor_scale >= block amax`` ("ceil": RTN's, or the next one
    up when RTN rounded down). Ties keep the larger scale (offsets are visited from large to
    small and only a strictly smaller error replaces the best). All-zero blocks keep scale 0."""
    if start not in ("rtn", "ceil"):
        raise ValueError(f"sharq: scale search start must be 'rtn' or 'ceil', got {start!r}")
    rtn, _ = _e4m3_block_scales(blocks, tensor_scale)
    base = rtn.view(torch.uint8).to(torch.int32)
    if start == "ceil":
        clips = rtn.float() * tensor_scale * 6.0 < blocks.abs().amax(-1)
        base = torch.where(clips, (base + 1).clamp(max=0x7E), base)
    best_code = base.clone()
    best_err = torch.full(base.shape, float("inf"), device=blocks.device)
    for off in offsets:
        cand = torch.where(base > 0, (base + off).clamp(1, 0x7E), base)
        scale = cand.to(torch.uint8).view(torch.float8_e4m3fn)
        d = scale.float() * tensor_scale
        deq = e2m1_decode(_encode_blocks(blocks, d)) * d.unsqueeze(-1)
        err = (deq - blocks).square().sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_code = torch.where(better, cand, best_code)
    return best_code.to(torch.uint8).view(torch.float8_e4m3fn)


def quantize_blocks_searched(
    x: torch.Tensor, fmt: BlockFormat, *, amax: torch.Tensor, rounding: str = "search"
) -> QuantizedBlocks:
    """E4M3 block quantization with a :data:`SCALE_SEARCHES` rounding instead of RTN scales."""
    if fmt.scale_kind != "e4m3":
        raise ValueError(f"scale search needs an E4M3 format, got {fmt.name}")
    if rounding not in SCALE_SEARCHES:
        raise ValueError(f"sharq: unknown scale search {rounding!r}; known: {list(SCALE_SEARCHES)}")
    start, offsets = SCALE_SEARCHES[rounding]
    k = x.shape[-1]
    check_block_multiple(k, fmt.block, f"{fmt.name} input")
    xf = x.float()
    blocks = xf.reshape(*xf.shape[:-1], k // fmt.block, fmt.block)
    tensor_scale = tensor_scale_of(amax)
    scales = search_e4m3_block_scales(blocks, tensor_scale, offsets, start)
    codes = _encode_blocks(blocks, scales.float() * tensor_scale)
    return QuantizedBlocks(pack_nibbles(codes.reshape(xf.shape)), scales, tensor_scale, fmt, fmt.block)
