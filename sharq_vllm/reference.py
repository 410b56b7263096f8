"""SharQ in plain PyTorch: the reference every kernel is tested against.

The method (README.md, "What SharQ does"; bit-level contract in docs/NUMERICS.md), per activation row x:

    mask      = nm_mask(x, pattern)              # N:M sparse backbone selection
    backbone  = Q(x * mask)                      # FP4, blocks of 2x the format's block
    residual  = Q(x - deQ(backbone))             # dense FP4: dropped values + rounding error
    x_hat     = deQ(backbone) + deQ(residual)    # rounded once to x.dtype
    y         = x_hat @ deQ(Wq)^T + bias         # Wq: E2M1 + E4M3/32 + FP32 tensor scale;
                                                 # float64 accumulation (batch-invariant)

Every function is batched over leading dims, takes bf16/fp16/fp32, and loops over no elements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .formats import (
    SCALE_SEARCHES,
    WEIGHT_FORMATS,
    QuantizedBlocks,
    activation_format,
    check_block_multiple,
    quantize_blocks,
    quantize_blocks_searched,
)
from .masks import check_pattern, group_size, nm_mask

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ACT_SCALES = ("token", "tensor")
WEIGHT_ROUNDINGS = ("rtn", *SCALE_SEARCHES)

WeightPayload = QuantizedBlocks


def check_input(x: torch.Tensor, what: str = "activation") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"sharq: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"sharq: {what} dtype {x.dtype} is not supported; expected bfloat16, float16 or float32"
        )
    if x.dim() < 1:
        raise ValueError(f"sharq: {what} must have at least one dimension")


def check_finite(x: torch.Tensor, what: str = "activation") -> None:
    """Raise if ``x`` holds NaN/Inf (a host sync: for tools and tests, not the serving path)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"sharq: {what} contains NaN or Inf values")


def _check_act_scale(act_scale: str) -> None:
    if act_scale not in ACT_SCALES:
        raise ValueError(f"unknown act_scale {act_scale!r}; expected one of {list(ACT_SCALES)}")


def _group_amax(x: torch.Tensor, act_scale: str) -> torch.Tensor:
    """amax over the tensor-scale group: per row ("token") or the whole tensor."""
    mag = x.float().abs()
    if act_scale == "token":
        return mag.amax(-1, keepdim=True)
    return mag.amax().reshape([1] * x.dim())


def backbone_block(fmt: str, pattern: str) -> int:
    """Channels per backbone scale: twice the dense block for a 50% sparse backbone, so each
    scale covers as many stored values as a dense block (NVFP4: 32, MXFP4: 64)."""
    block = activation_format(fmt).block
    return block if pattern == "dense" else 2 * block


def residual_block(fmt: str) -> int:
    """Channels per residual scale: the format's own (dense) block (NVFP4: 16, MXFP4: 32)."""
    return activation_format(fmt).block


def required_multiple(fmt: str, pattern: str) -> int:
    """What the activations' last dim (the layer's K) must be a multiple of."""
    return max(backbone_block(fmt, pattern), group_size(pattern))


def required_k_multiple(fmt: str, pattern: str, weight_block: int) -> int:
    """What a SharQ linear's K (per tensor-parallel shard) must be a multiple of, so that no
    block straddles a shard: every activation block and N:M group, and the weight block."""
    return max(required_multiple(fmt, pattern), weight_block)


@dataclass
class ActivationPayload:
    """What the preparation step produces for one activation tensor."""

    mask: torch.Tensor  # bool [..., K]
    backbone: QuantizedBlocks
    residual: QuantizedBlocks
    x_hat: torch.Tensor  # [..., K] in the input dtype; NaN rows where the input was non-finite


def prepare_activation(
    x: torch.Tensor,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    *,
    act_scale: str = "token",
    check_finite_values: bool = False,
) -> ActivationPayload:
    """Decompose activations into a quantized sparse backbone and a quantized dense residual.

    Rows holding NaN/Inf come out as all-NaN rows of x_hat (their codes are unspecified), so a
    bad token never turns into plausible numbers; ``check_finite_values`` raises instead.
    """
    check_input(x)
    check_pattern(pattern)
    _check_act_scale(act_scale)
    block_fmt = activation_format(fmt)
    check_block_multiple(x.shape[-1], required_multiple(fmt, pattern), "activation")
    if check_finite_values:
        check_finite(x)

    xf = x.float()
    finite_rows = torch.isfinite(xf).all(-1, keepdim=True)
    if act_scale == "tensor":
        finite_rows = finite_rows.all().expand_as(finite_rows)
    xf = torch.where(finite_rows, xf, torch.zeros_like(xf))

    mask = nm_mask(xf, pattern)
    sparse = torch.where(mask, xf, torch.zeros_like(xf))
    amax = _group_amax(xf, act_scale)  # the row max is always kept, so this is also S's amax
    backbone = quantize_blocks(sparse, block_fmt, block=backbone_block(fmt, pattern), amax=amax)
    backbone_hat = backbone.dequantize()

    residual_values = xf - backbone_hat
    residual = quantize_blocks(
        residual_values, block_fmt, block=residual_block(fmt), amax=_group_amax(residual_values, act_scale)
    )
    x_hat = backbone_hat + residual.dequantize()
    x_hat = torch.where(finite_rows, x_hat, torch.full_like(x_hat, float("nan")))
    return ActivationPayload(mask, backbone, residual, x_hat.to(x.dtype))


def sharq_activation(
    x: torch.Tensor,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    *,
    act_scale: str = "token",
    check_finite_values: bool = False,
) -> torch.Tensor:
    """x_hat = deQ(Q(backbone)) + deQ(Q(residual)), in x's dtype."""
    return prepare_activation(
        x, fmt, pattern, act_scale=act_scale, check_finite_values=check_finite_values
    ).x_hat


def fake_quantize(x: torch.Tensor, fmt: str, *, act_scale: str = "token") -> torch.Tensor:
    """Plain block FP4 quantize-dequantize (the W4A4 baseline), in x's dtype. Non-finite rows
    become NaN rows, as in :func:`prepare_activation`."""
    check_input(x)
    _check_act_scale(act_scale)
    block_fmt = activation_format(fmt)
    check_block_multiple(x.shape[-1], block_fmt.block, "activation")
    xf = x.float()
    finite_rows = torch.isfinite(xf).all(-1, keepdim=True)
    xf = torch.where(finite_rows, xf, torch.zeros_like(xf))
    out = quantize_blocks(xf, block_fmt, amax=_group_amax(xf, act_scale)).dequantize()
    return torch.where(finite_rows, out, torch.full_like(out, float("nan"))).to(x.dtype)


def quantize_weight(
    w: torch.Tensor,
    block: int = 32,
    rounding: str = "rtn",
    tensor_amax: torch.Tensor | None = None,
) -> WeightPayload:
    """The shared FP4 weight payload: E2M1 codes, one E4M3 scale per ``block`` input channels
    (32 in the paper; 16 is our "sharq-plus" option) and an FP32 tensor scale.

    tensor_amax: the amax the tensor scale derives from (default: this tensor's). Under tensor
    parallelism pass the all-reduced amax so each rank's payload is the TP=1 payload's slice.
    """
    check_input(w, "weight")
    if w.dim() != 2:
        raise ValueError(f"sharq: weight must be 2-D [out, in], got shape {tuple(w.shape)}")
    if block not in WEIGHT_FORMATS:
        raise ValueError(f"sharq: weight block must be one of {sorted(WEIGHT_FORMATS)}, got {block}")
    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"sharq: weight rounding must be one of {list(WEIGHT_ROUNDINGS)}, got {rounding!r}")
    check_finite(w, "weight")
    fmt = WEIGHT_FORMATS[block]
    amax = w.float().abs().amax() if tensor_amax is None else tensor_amax.float()
    amax = amax.reshape(1, 1)
    if rounding in SCALE_SEARCHES:
        payload = quantize_blocks_searched(w, fmt, amax=amax, rounding=rounding)
    else:
        payload = quantize_blocks(w, fmt, amax=amax)
    payload.tensor_scale = payload.tensor_scale.reshape(1) if payload.tensor_scale is not None else None
    return payload


def dense_view_scales(payload: WeightPayload) -> torch.Tensor:
    """The 32-block E4M3 scales seen as 16-block scales (each repeated for its two halves):
    how the dense residual path reads the one shared payload."""
    return payload.block_scales.repeat_interleave(payload.block // 16, dim=-1)


def dequantize_weight(payload: WeightPayload) -> torch.Tensor:
    """FP32 [N, K] weights the payload represents."""
    ts = payload.tensor_scale
    assert ts is not None
    fixed = QuantizedBlocks(payload.codes, payload.block_scales, ts.reshape(1, 1), payload.fmt, payload.block)
    return fixed.dequantize()


def sharq_weight(w: torch.Tensor, block: int = 32, rounding: str = "rtn") -> torch.Tensor:
    """Quantize-dequantize a weight through the SharQ payload, in w's dtype."""
    return dequantize_weight(quantize_weight(w, block, rounding)).to(w.dtype)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 (CPU, CUDA); MPS has no float64, so FP32 there (not batch-invariant)."""
    return torch.float32 if device.type == "mps" else torch.float64


# :func:`gemm` dequantizes the weight a slice of output rows at a time, the slice's float64
# weight about this many bytes: on CPU the slice stays in cache from dequantization to GEMM
# (faster than one whole-matrix pass, even in FP32); elsewhere it bounds the transient memory.
GEMM_SLICE_BYTES = {"cpu": 4 << 20}
GEMM_SLICE_BYTES_DEFAULT = 128 << 20


def gemm(x_hat: torch.Tensor, weight: WeightPayload, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x_hat @ deQ(W)^T + bias, accumulated in float64, rounded to FP32 and then to
    x_hat's dtype (docs/NUMERICS.md, "Linear").

    Batch-invariant (a row's bits do not depend on the other rows): every product (x_hat value
    x FP32 weight, <= 48 significant bits) is exact in float64, and the sum's rounding errors
    (~2^-53 relative) are far below the FP32 rounding that follows, so the summation order the
    BLAS picks for the batch's row count M, which moves an FP32 GEMM's last bits, does not show
    in the result (short of a sum within ~K * 2^-53 of an FP32 rounding boundary). The weight
    slices depend on N and K only, never on M.
    """
    acc = accumulation_dtype(x_hat.device)
    k = x_hat.shape[-1]
    n = weight.codes.shape[0]
    x2 = x_hat.reshape(-1, k).to(acc)  # exact
    budget = GEMM_SLICE_BYTES.get(x_hat.device.type, GEMM_SLICE_BYTES_DEFAULT)
    rows = max(16, budget // (k * x2.element_size()))
    parts = []
    for r0 in range(0, n, rows):
        sl = slice(r0, r0 + rows)
        part = replace(weight, codes=weight.codes[sl], block_scales=weight.block_scales[sl])
        parts.append(x2 @ dequantize_weight(part).to(acc).T)  # the widening is exact
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    if bias is not None:
        y = y + bias.to(acc)
    return y.float().to(x_hat.dtype).reshape(*x_hat.shape[:-1], n)


def apply_linear(
    x: torch.Tensor,
    weight: WeightPayload,
    bias: torch.Tensor | None = None,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    *,
    act_scale: str = "token",
) -> torch.Tensor:
    """y = x_hat @ deQ(W)^T + bias with a pre-quantized weight (:func:`gemm`), x's dtype out."""
    return gemm(sharq_activation(x, fmt, pattern, act_scale=act_scale), weight, bias)


def sharq_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    *,
    weight_block: int = 32,
    weight_rounding: str = "rtn",
    act_scale: str = "token",
) -> torch.Tensor:
    """A SharQ linear layer end to end: quantize w, decompose x, multiply."""
    return apply_linear(
        x, quantize_weight(w, weight_block, weight_rounding), bias, fmt, pattern, act_scale=act_scale
    )
