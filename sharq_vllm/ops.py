"""The SharQ op layer: torch.library ops that every caller (the vLLM linear method, tests,
benchmarks) goes through.

Ops (all with fake impls, so torch.compile(fullgraph=True) traces them; no host syncs; output
shapes depend only on input shapes; batch-size dispatch happens inside the CUDA impls, so they
are CUDA-graph capturable):

``torch.ops.sharq.prepare(x, fmt, pattern, norm_weight=None, eps=1e-6) -> x_hat``
    SharQ activation decomposition (reference.sharq_activation), optionally after an RMSNorm.
``torch.ops.sharq.prepare_debug(x, fmt, pattern) -> (x_hat, mask, bb_codes, bb_scales,
    res_codes, res_scales, tscales)``: the codes and scales too, for bit-exactness tests.
``torch.ops.sharq.gemm(x_hat, qweight, scales, tensor_scale, bias, n, n_pad, k, block, layout)
    -> y``: y = x_hat @ deQ(W)^T + bias with the weight from :func:`pack_weight`.

CPU (and any device without the extension): the reference in plain PyTorch. CUDA: the kernels
in csrc/ (``torch.ops.sharq_C``); if the extension cannot be loaded the CUDA impl falls back
to the reference with a one-line warning.

Public API: :func:`pack_weight`, :func:`sharq_linear`, :func:`kernel_path_available`,
:func:`describe_kernel`, :class:`PackedWeight`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from . import kernels as _kernels
from .formats import WEIGHT_FORMATS, QuantizedBlocks
from .kernels.layout import tile_weight, untile_weight
from .reference import WeightPayload, dequantize_weight, prepare_activation
from .reference import gemm as reference_gemm

logger = logging.getLogger(__name__)

FMT_CODES = {"nvfp4": 0, "mxfp4": 1}
PATTERN_CODES = {"dense": 0, "2:4": 1, "4:8-pairs": 2}
LAYOUT_CANONICAL = 0  # codes [N, K/2] uint8, scales float8_e4m3fn [N, K/block]
LAYOUT_TILED = 1  # sharq_vllm/kernels/layout.py (csrc/fp4_tile.cuh): what the CUDA GEMMs read

# Dispatch knobs (read once; tests and benchmarks may change CONFIG at run time).
CONFIG: dict[str, Any] = {
    # "auto": decode kernel for M <= decode_max_m (at most 16), else the wgmma kernel; or force
    # "wgmma" for every M
    "gemm_path": os.environ.get("SHARQ_GEMM_PATH", "auto"),
    "decode_max_m": 16,
}

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


def _ext_ok() -> bool:
    ok, why = _kernels.load_extension()
    if not ok:
        _warn_once("ext", f"sharq: CUDA kernels unavailable ({why}); using the PyTorch reference")
    return ok


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------
@dataclass
class PackedWeight:
    """A weight payload in the layout the op consumes on its device (see :func:`pack_weight`)."""

    qweight: torch.Tensor  # tiled: uint8 [N_pad/16, K/64*512]; canonical: uint8 [N, K/2]
    scales: torch.Tensor  # uint8; tiled: scale codes [N_pad/16, K/64*bytes]; canonical: E4M3 [N, K/block]
    tensor_scale: torch.Tensor  # fp32 [1]
    n: int
    n_pad: int
    k: int
    block: int
    layout: int

    @property
    def nbytes(self) -> int:
        return (
            self.qweight.numel() * self.qweight.element_size()
            + self.scales.numel() * self.scales.element_size()
        )


def pack_weight(payload: WeightPayload, device: torch.device | str | None = None) -> PackedWeight:
    """Prepare a weight payload for :func:`sharq_linear` (once, in process_weights_after_loading).

    On CUDA with the extension loaded (and K % 64 == 0): the tiled kernel layout
    (sharq_vllm/kernels/layout.py), 4.5 (32-blocks) or 4.75 (16-blocks) bits a weight. Elsewhere:
    the canonical payload tensors on ``device``.
    """
    device = torch.device(device) if device is not None else payload.codes.device
    ts = payload.tensor_scale
    if ts is None:
        raise ValueError("sharq: weight payload has no tensor scale")
    ts = ts.reshape(1).float().to(device)
    n, k2 = payload.codes.shape
    k = 2 * k2
    block = payload.block
    if device.type == "cuda" and k % 64 == 0 and block in (16, 32) and _ext_ok():
        q, s, n_pad = tile_weight(payload.codes.to(device), payload.block_scales.to(device), block)
        return PackedWeight(q, s, ts, n, n_pad, k, block, LAYOUT_TILED)
    codes = payload.codes.to(device).contiguous()
    scales = payload.block_scales.to(device).contiguous().view(torch.uint8)  # raw E4M3 bytes
    return PackedWeight(codes, scales, ts, n, n, k, block, LAYOUT_CANONICAL)


def _canonical_payload(qweight, scales, tensor_scale, n, k, block, layout) -> WeightPayload:
    if layout == LAYOUT_TILED:
        codes, sc = untile_weight(qweight, scales, n, k, block)
        scales = sc.view(torch.float8_e4m3fn)
    else:
        codes = qweight
        if scales.dtype == torch.uint8:
            scales = scales.view(torch.float8_e4m3fn)
    return QuantizedBlocks(codes, scales, tensor_scale.reshape(1), WEIGHT_FORMATS[block], block)


def dequantize_packed(packed: PackedWeight) -> torch.Tensor:
    """FP32 [N, K] weights a packed weight represents (tests, tools)."""
    return dequantize_weight(
        _canonical_payload(
            packed.qweight,
            packed.scales,
            packed.tensor_scale,
            packed.n,
            packed.k,
            packed.block,
            packed.layout,
        )
    )


# ----------------------------------------------------------------------------------------
# sharq::prepare
# ----------------------------------------------------------------------------------------
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """vLLM's RMSNorm numerics: normalize in FP32, round to x.dtype, multiply by the weight."""
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    return (xf * torch.rsqrt(var + eps)).to(x.dtype) * weight.to(x.dtype)


def _prepare_reference(x, fmt, pattern, norm_weight, eps):
    if norm_weight is not None:
        x = _rms_norm(x, norm_weight, eps)
    return prepare_activation(x, fmt, pattern).x_hat


@torch.library.custom_op("sharq::prepare", mutates_args=())
def prepare(
    x: torch.Tensor,
    fmt: str,
    pattern: str,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    return _prepare_reference(x, fmt, pattern, norm_weight, eps)


@prepare.register_fake
def _(x, fmt, pattern, norm_weight=None, eps=1e-6):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _kernel_prep_ok(x: torch.Tensor, fmt: str, pattern: str) -> bool:
    if (
        x.dtype not in (torch.bfloat16, torch.float16)
        or fmt not in FMT_CODES
        or pattern not in PATTERN_CODES
    ):
        return False
    k = x.shape[-1]
    need = (32 if fmt == "mxfp4" else 16) * (1 if pattern == "dense" else 2)
    return k % need == 0 and k <= 32768 and _ext_ok()


@prepare.register_kernel("cuda")
def _(x, fmt, pattern, norm_weight=None, eps=1e-6):
    if not _kernel_prep_ok(x, fmt, pattern):
        return _prepare_reference(x, fmt, pattern, norm_weight, eps)
    if norm_weight is not None:
        x = _rms_norm(x, norm_weight, eps)  # TODO(kernels): fuse into the preparation kernel
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.stride(0) * x2.element_size()) % 16 or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], k), dtype=x.dtype, device=x.device)
    torch.ops.sharq_C.prep(x2, out, FMT_CODES[fmt], PATTERN_CODES[pattern])
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------------
# sharq::prepare_debug (codes and scales, for bit-exactness tests)
# ----------------------------------------------------------------------------------------
def _block_sizes(fmt: str, pattern: str) -> tuple[int, int]:
    base = 32 if fmt == "mxfp4" else 16
    return (base if pattern == "dense" else 2 * base), base


def _prepare_debug_reference(x, fmt, pattern):
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    p = prepare_activation(x2, fmt, pattern)

    def scale_bytes(q):
        s = q.block_scales
        return (s.view(torch.uint8) if s.dtype == torch.float8_e4m3fn else s).contiguous()

    m = x2.shape[0]
    if p.backbone.tensor_scale is not None and p.residual.tensor_scale is not None:
        ts = torch.cat(
            [p.backbone.tensor_scale.reshape(m, 1), p.residual.tensor_scale.reshape(m, 1)], 1
        )
    else:
        ts = torch.zeros(m, 2, dtype=torch.float32, device=x.device)
    return (
        p.x_hat,
        p.mask.to(torch.uint8),
        p.backbone.codes.contiguous(),
        scale_bytes(p.backbone),
        p.residual.codes.contiguous(),
        scale_bytes(p.residual),
        ts.float().contiguous(),
    )


@torch.library.custom_op("sharq::prepare_debug", mutates_args=())
def prepare_debug(
    x: torch.Tensor, fmt: str, pattern: str
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    return _prepare_debug_reference(x, fmt, pattern)


@prepare_debug.register_fake
def _(x, fmt, pattern):
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    bb, rb = _block_sizes(fmt, pattern)
    u8 = dict(dtype=torch.uint8, device=x.device)
    return (
        x.new_empty((m, k)),
        x.new_empty((m, k), **u8),
        x.new_empty((m, k // 2), **u8),
        x.new_empty((m, k // bb), **u8),
        x.new_empty((m, k // 2), **u8),
        x.new_empty((m, k // rb), **u8),
        x.new_empty((m, 2), dtype=torch.float32),
    )


@prepare_debug.register_kernel("cuda")
def _(x, fmt, pattern):
    if not _kernel_prep_ok(x, fmt, pattern):
        return _prepare_debug_reference(x, fmt, pattern)
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    bb, rb = _block_sizes(fmt, pattern)
    u8 = dict(dtype=torch.uint8, device=x.device)
    out = torch.empty_like(x2)
    mask = torch.empty((m, k), **u8)
    bbc = torch.empty((m, k // 2), **u8)
    bbs = torch.empty((m, k // bb), **u8)
    rc = torch.empty((m, k // 2), **u8)
    rs = torch.empty((m, k // rb), **u8)
    ts = torch.empty((m, 2), dtype=torch.float32, device=x.device)
    torch.ops.sharq_C.prep_debug(
        x2, out, mask, bbc, bbs, rc, rs, ts, FMT_CODES[fmt], PATTERN_CODES[pattern]
    )
    return out, mask, bbc, bbs, rc, rs, ts


# ----------------------------------------------------------------------------------------
# sharq::gemm
# ----------------------------------------------------------------------------------------
def _gemm_reference(x_hat, qweight, scales, tensor_scale, bias, n, k, block, layout):
    payload = _canonical_payload(qweight, scales, tensor_scale, n, k, block, layout)
    return reference_gemm(x_hat, payload, bias)


@torch.library.custom_op("sharq::gemm", mutates_args=())
def gemm(
    x_hat: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    tensor_scale: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    n_pad: int,
    k: int,
    block: int,
    layout: int,
) -> torch.Tensor:
    return _gemm_reference(x_hat, qweight, scales, tensor_scale, bias, n, k, block, layout)


@gemm.register_fake
def _(x_hat, qweight, scales, tensor_scale, bias, n, n_pad, k, block, layout):
    return x_hat.new_empty((*x_hat.shape[:-1], n))


def gemm_path_for(m: int) -> str:
    """Which CUDA path the op takes for M rows (a pure function of M and CONFIG)."""
    path = str(CONFIG["gemm_path"])
    if path != "auto":
        return path
    return "decode" if m <= min(16, int(CONFIG["decode_max_m"])) else "wgmma"


def _gemm_cuda_decode(x2, qweight, scales, tensor_scale, bias, n, n_pad, block, w=0, cl=0):
    out = torch.empty((x2.shape[0], n), dtype=x2.dtype, device=x2.device)
    torch.ops.sharq_C.gemm_decode(x2, qweight, scales, tensor_scale, bias, out, n_pad, block, w, cl)
    return out


def _gemm_cuda_wgmma(x2, qweight, scales, tensor_scale, bias, n, n_pad, block, tok=0, cl=0):
    out = torch.empty((x2.shape[0], n), dtype=x2.dtype, device=x2.device)
    torch.ops.sharq_C.gemm_wgmma(x2, qweight, scales, tensor_scale, bias, out, n_pad, block, tok, cl)
    return out


@gemm.register_kernel("cuda")
def _(x_hat, qweight, scales, tensor_scale, bias, n, n_pad, k, block, layout):
    if (
        layout != LAYOUT_TILED
        or x_hat.dtype not in (torch.bfloat16, torch.float16)
        or not _ext_ok()
    ):
        return _gemm_reference(x_hat, qweight, scales, tensor_scale, bias, n, k, block, layout)
    x2 = x_hat.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.stride(0) * x2.element_size()) % 16 or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    if bias is not None and bias.dtype != x2.dtype:
        bias = bias.to(x2.dtype)
    m = x2.shape[0]
    if gemm_path_for(m) == "decode":
        y = _gemm_cuda_decode(x2, qweight, scales, tensor_scale, bias, n, n_pad, block)
    else:
        y = _gemm_cuda_wgmma(x2, qweight, scales, tensor_scale, bias, n, n_pad, block)
    return y.reshape(*x_hat.shape[:-1], n)


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------
def sharq_gemm(
    x_hat: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return torch.ops.sharq.gemm(
        x_hat,
        packed.qweight,
        packed.scales,
        packed.tensor_scale,
        bias,
        packed.n,
        packed.n_pad,
        packed.k,
        packed.block,
        packed.layout,
    )


def sharq_linear(
    x: torch.Tensor,
    packed: PackedWeight,
    bias: torch.Tensor | None = None,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    x_hat: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = sharq_activation(x) @ deQ(W)^T + bias. Pass ``x_hat`` (from ``torch.ops.sharq.prepare``)
    to share one preparation between layers that read the same input (q/k/v, gate/up)."""
    if x_hat is None:
        x_hat = torch.ops.sharq.prepare(x, fmt, pattern)
    return sharq_gemm(x_hat, packed, bias)


def kernel_path_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(True, how) when the CUDA kernels serve ``device``; (False, why not) otherwise."""
    device = (
        torch.device(device)
        if device is not None
        else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    )
    if device.type != "cuda":
        return False, f"device {device} has no SharQ kernels (PyTorch reference)"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    ok, why = _kernels.load_extension()
    if not ok:
        return False, f"extension not loaded: {why}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"compute capability {major}.{minor} < 8.9 (needs e4m3 conversion)"
    return True, f"{why}; sm_{major}{minor}"


def describe_kernel(device: torch.device | str | None = None) -> str:
    """One line for the startup log: which paths serve which M (independent of M)."""
    ok, why = kernel_path_available(device)
    if not ok:
        return f"sharq kernels: reference PyTorch path ({why})"
    path = CONFIG["gemm_path"]
    if path == "auto":
        dm = CONFIG["decode_max_m"]
        disp = (
            f"M<={dm}: split-K decode kernel (bulk-async weight ring, mma.sync); M>{dm}: wgmma "
            "kernel (FP4 decoded in registers)"
        )
    else:
        disp = f"forced {path}"
    return f"sharq kernels: fused prep (CUDA) + GEMM [{disp}] ({why})"
