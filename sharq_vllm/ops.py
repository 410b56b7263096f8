"""The SharQ op layer: torch.library ops that every caller (the vLLM linear method, tests,
benchmarks) goes through.

Ops (all with fake impls, so torch.compile(fullgraph=True) traces them; no host syncs; output
shapes depend only on input shapes; the kernel choice by M happens inside the CUDA impls, so
they are CUDA-graph capturable):

``torch.ops.sharq.prepare(x, fmt, pattern, act_scale="token") -> x_hat``
    SharQ activation decomposition (reference.sharq_activation).
``torch.ops.sharq.prepare_rms_norm(x, weight, eps, fmt, pattern, act_scale="token") -> x_hat``,
``torch.ops.sharq.prepare_add_rms_norm(x, residual, weight, eps, fmt, pattern, act_scale="token")
    -> (x_hat, residual_out)`` and ``torch.ops.sharq.prepare_silu_mul(x, fmt, pattern,
    act_scale="token") -> x_hat``: the same after vLLM's RMSNorm or SiLU * mul
    (sharq_vllm/producers.py), in one kernel.
``torch.ops.sharq.prepare_debug(x, fmt, pattern) -> (x_hat, mask, bb_codes, bb_scales,
    res_codes, res_scales, tscales)``: the codes and scales too, for bit-exactness tests.
``torch.ops.sharq.gemm(x_hat, qweight, scales, tensor_scale, bias, n, n_pad, k, block, layout,
    alpha) -> y``: y = x_hat @ deQ(W)^T + bias with the weight from :func:`pack_weight`.

The preparation ops and ``gemm`` take ``x_frag`` (default 0): the most rows of x_hat stored in
fragment order (kernels/layout.py, ``xhat_to_fragments``; 0, 16 or 32, ``dispatch.XHAT_FRAGMENT_LIMITS``)
in whole 8-row groups (``dispatch.xhat_fragment_rows``), row-major otherwise; the stream GEMM reads
it faster. A producer and its GEMM must agree, and 32 only suits a GEMM that takes the stream
kernel up to 32 rows (``dispatch.xhat_fragment_limit``: the vLLM plugin passes each layer's value
to both); every path (kernel or reference) honours it.

CPU: the reference in plain PyTorch. CUDA: the kernels in sharq_vllm/csrc/ (``torch.ops.sharq_C``) where
:mod:`sharq_vllm.kernels.dispatch` says they serve the call, the reference otherwise.

Public API: :func:`pack_weight`, :func:`sharq_linear`, :func:`sharq_gemm`, :func:`sharq_gemm_rows`,
:func:`kernel_path_available`, :func:`describe_kernel`, :class:`PackedWeight`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .formats import WEIGHT_FORMATS, QuantizedBlocks
from .kernels import dispatch
from .kernels.layout import tile_weight, untile_weight, xhat_from_fragments, xhat_to_fragments
from .producers import rms_norm, silu_and_mul
from .reference import (
    WeightPayload,
    backbone_block,
    dequantize_weight,
    prepare_activation,
    residual_block,
)
from .reference import gemm as reference_gemm

LAYOUT_CANONICAL = 0  # codes [N, K/2] uint8, scales float8_e4m3fn [N, K/block]
LAYOUT_TILED = 1  # sharq_vllm/kernels/layout.py (sharq_vllm/csrc/gemm.cu): what the CUDA GEMMs read

DebugOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------
@dataclass
class PackedWeight:
    """A weight payload in the layout the op consumes on its device (see :func:`pack_weight`)."""

    qweight: torch.Tensor  # tiled: int32 [N_pad/16, K/64*128]; canonical: uint8 [N, K/2]
    scales: torch.Tensor  # uint8 E4M3 bytes; tiled: [N_pad/16, K/64*bytes]; canonical: [N, K/block]
    tensor_scale: torch.Tensor  # fp32 [1]
    n: int
    n_pad: int
    k: int
    block: int
    layout: int
    alpha: float  # float(tensor_scale): the cuBLAS path's epilogue scale (read once, at pack time)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.tensor_scale))

    @property
    def geometry(self) -> tuple[int, int, int, int, int, float]:
        """(n, n_pad, k, block, layout, alpha): everything but the tensors."""
        return self.n, self.n_pad, self.k, self.block, self.layout, self.alpha


def pack_weight(
    payload: WeightPayload, device: torch.device | str | None = None, act_dtype: torch.dtype | None = None
) -> PackedWeight:
    """Prepare a weight payload for :func:`sharq_linear` (once, in process_weights_after_loading).

    Where the CUDA GEMMs serve it (dispatch.weight_on_kernel; ``act_dtype``: the activations'
    dtype if known): the tiled kernel layout (sharq_vllm/kernels/layout.py), 4.5 (32-blocks) or
    4.75 (16-blocks) bits a weight. Elsewhere: the canonical payload tensors on ``device``.
    """
    dev = torch.device(device) if device is not None else payload.codes.device
    ts = payload.tensor_scale
    if ts is None:
        raise ValueError("sharq: weight payload has no tensor scale")
    ts = ts.reshape(1).float().to(dev)
    alpha = float(ts.cpu())  # once, at load time: the op itself never syncs with the host
    n, k2 = payload.codes.shape
    k = 2 * k2
    block = payload.block
    if dispatch.weight_on_kernel(dev, k, block, act_dtype):
        q, s, n_pad = tile_weight(payload.codes.to(dev), payload.block_scales.to(dev), block)
        return PackedWeight(q, s, ts, n, n_pad, k, block, LAYOUT_TILED, alpha)
    codes = payload.codes.to(dev).contiguous()
    scales = payload.block_scales.to(dev).contiguous().view(torch.uint8)  # raw E4M3 bytes
    return PackedWeight(codes, scales, ts, n, n, k, block, LAYOUT_CANONICAL, alpha)


def _canonical_payload(
    qweight: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor, n: int, k: int, block: int, layout: int
) -> WeightPayload:
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
    p = packed
    return dequantize_weight(_canonical_payload(p.qweight, p.scales, p.tensor_scale, p.n, p.k, p.block, p.layout))


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """x as [M, K] rows the kernels read (unit stride, 16-byte aligned rows)."""
    x2 = x if x.dim() == 2 and x.shape[1] == k else x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.stride(0) * x2.element_size()) % 16 or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    return x2


def _fragments(x_hat: torch.Tensor, x_frag: int) -> bool:
    """Whether ``x_hat`` (rows of its last dim) is in fragment order (see the module docstring)."""
    return dispatch.xhat_fragment_rows(x_hat.numel() // x_hat.shape[-1] if x_hat.shape[-1] else 0, x_frag)


def _to_order(x_hat: torch.Tensor, x_frag: int) -> torch.Tensor:
    """Row-major x_hat as the caller asked for it (the reference paths)."""
    if not _fragments(x_hat, x_frag):
        return x_hat
    return xhat_to_fragments(x_hat.reshape(-1, x_hat.shape[-1])).reshape(x_hat.shape)


def _from_order(x_hat: torch.Tensor, x_frag: int) -> torch.Tensor:
    """x_hat as the caller gave it -> row-major (the reference paths)."""
    if not _fragments(x_hat, x_frag):
        return x_hat
    return xhat_from_fragments(x_hat.reshape(-1, x_hat.shape[-1])).reshape(x_hat.shape)


# ----------------------------------------------------------------------------------------
# sharq::prepare
# ----------------------------------------------------------------------------------------
def _prepare_reference(x: torch.Tensor, fmt: str, pattern: str, act_scale: str, x_frag: int = 0) -> torch.Tensor:
    return _to_order(prepare_activation(x, fmt, pattern, act_scale=act_scale).x_hat, x_frag)


@torch.library.custom_op("sharq::prepare", mutates_args=())
def prepare(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0) -> torch.Tensor:
    return _prepare_reference(x, fmt, pattern, act_scale, x_frag)


@prepare.register_fake
def _(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def run_prep(x: torch.Tensor, codes: tuple[int, int, int, int], x_frag: int = 0) -> torch.Tensor:
    """The preparation kernel on ``x`` (``codes``: dispatch.prep_values) where
    dispatch.prep_on_kernel holds: the body of the op's CUDA impl, also called directly by the
    vLLM plugin's ops (which decide that once a layer, not once a call)."""
    k = x.shape[-1]
    x2 = _rows(x, k)
    out = torch.empty((x2.shape[0], k), dtype=x.dtype, device=x.device)
    torch.ops.sharq_C.prep(x2, out, *codes, x_frag)
    return out if x.dim() == 2 else out.reshape(x.shape)


@prepare.register_kernel("cuda")
def _(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0) -> torch.Tensor:
    if not dispatch.prep_on_kernel(x, fmt, pattern, act_scale):
        return _prepare_reference(x, fmt, pattern, act_scale, x_frag)
    return run_prep(x, dispatch.prep_values(fmt, pattern), x_frag)


# ----------------------------------------------------------------------------------------
# sharq::prepare_rms_norm / prepare_add_rms_norm / prepare_silu_mul (the activation's producer +
# the preparation, sharq_vllm/producers.py)
# ----------------------------------------------------------------------------------------
def run_prep_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, codes: tuple[int, int, int, int],
    x_frag: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RMSNorm (+ residual add) + preparation kernel where dispatch.prep_norm_on_kernel
    holds (see :func:`run_prep`): (x_hat, residual_out or None)."""
    k = x.shape[-1]
    x2 = _rows(x, k)
    r2 = None if residual is None else _rows(residual, k)
    out = torch.empty((x2.shape[0], k), dtype=x.dtype, device=x.device)
    r_out = None if residual is None else torch.empty_like(out)
    torch.ops.sharq_C.prep_norm(x2, r2, r_out, weight.contiguous(), eps, out, *codes, 0, 0, x_frag)
    if x.dim() == 2:
        return out, r_out
    return out.reshape(x.shape), None if r_out is None else r_out.reshape(x.shape)


def _prepare_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, fmt: str, pattern: str,
    act_scale: str, x_frag: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused kernel where it serves the call; elsewhere producers.rms_norm, then the
    preparation (kernel or reference): the same bits either way."""
    if dispatch.prep_norm_on_kernel(x, weight, fmt, pattern, act_scale):
        return run_prep_norm(x, residual, weight, eps, dispatch.prep_values(fmt, pattern), x_frag)
    y, r_out = rms_norm(x, weight, eps, residual)
    return torch.ops.sharq.prepare(y, fmt, pattern, act_scale, x_frag), r_out


@torch.library.custom_op("sharq::prepare_rms_norm", mutates_args=())
def prepare_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fmt: str, pattern: str, act_scale: str = "token",
    x_frag: int = 0,
) -> torch.Tensor:
    return _prepare_norm(x, None, weight, eps, fmt, pattern, act_scale, x_frag)[0]


@prepare_rms_norm.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fmt: str, pattern: str, act_scale: str = "token",
    x_frag: int = 0,
) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("sharq::prepare_add_rms_norm", mutates_args=())
def prepare_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fmt: str, pattern: str,
    act_scale: str = "token", x_frag: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    x_hat, r_out = _prepare_norm(x, residual, weight, eps, fmt, pattern, act_scale, x_frag)
    assert r_out is not None
    return x_hat, r_out


@prepare_add_rms_norm.register_fake
def _(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fmt: str, pattern: str,
    act_scale: str = "token", x_frag: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@torch.library.custom_op("sharq::prepare_silu_mul", mutates_args=())
def prepare_silu_mul(
    x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0
) -> torch.Tensor:
    return _prepare_reference(silu_and_mul(x), fmt, pattern, act_scale, x_frag)


@prepare_silu_mul.register_fake
def _(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@prepare_silu_mul.register_kernel("cuda")
def _(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token", x_frag: int = 0) -> torch.Tensor:
    if not dispatch.prep_silu_mul_on_kernel(x, fmt, pattern, act_scale):
        return torch.ops.sharq.prepare(silu_and_mul(x), fmt, pattern, act_scale, x_frag)  # type: ignore[no-any-return]
    return run_prep_silu_mul(x, dispatch.prep_values(fmt, pattern), x_frag)


def run_prep_silu_mul(x: torch.Tensor, codes: tuple[int, int, int, int], x_frag: int = 0) -> torch.Tensor:
    """The SiLU * mul + preparation kernel on x = [..., gate | up] where
    dispatch.prep_silu_mul_on_kernel holds (see :func:`run_prep`)."""
    x2 = _rows(x, x.shape[-1])
    k = x2.shape[1] // 2
    out = torch.empty((x2.shape[0], k), dtype=x.dtype, device=x.device)
    torch.ops.sharq_C.prep_silu_mul(x2, out, *codes, 0, 0, x_frag)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], k)


# ----------------------------------------------------------------------------------------
# sharq::prepare_debug (codes and scales, for bit-exactness tests)
# ----------------------------------------------------------------------------------------
def _prepare_debug_reference(x: torch.Tensor, fmt: str, pattern: str) -> DebugOut:
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    p = prepare_activation(x2, fmt, pattern)

    def scale_bytes(q: QuantizedBlocks) -> torch.Tensor:
        s = q.block_scales
        return (s.view(torch.uint8) if s.dtype == torch.float8_e4m3fn else s).contiguous()

    m = x2.shape[0]
    if p.backbone.tensor_scale is not None and p.residual.tensor_scale is not None:
        ts = torch.cat([p.backbone.tensor_scale.reshape(m, 1), p.residual.tensor_scale.reshape(m, 1)], 1)
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


def _debug_outputs(x: torch.Tensor, fmt: str, pattern: str) -> DebugOut:
    """Empty outputs of prepare_debug (shapes from x and the two blocks)."""
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    bb, rb = backbone_block(fmt, pattern), residual_block(fmt)
    u8 = torch.uint8
    return (
        x.new_empty((m, k)),
        x.new_empty((m, k), dtype=u8),
        x.new_empty((m, k // 2), dtype=u8),
        x.new_empty((m, k // bb), dtype=u8),
        x.new_empty((m, k // 2), dtype=u8),
        x.new_empty((m, k // rb), dtype=u8),
        x.new_empty((m, 2), dtype=torch.float32),
    )


@torch.library.custom_op("sharq::prepare_debug", mutates_args=())
def prepare_debug(x: torch.Tensor, fmt: str, pattern: str) -> DebugOut:
    return _prepare_debug_reference(x, fmt, pattern)


@prepare_debug.register_fake
def _(x: torch.Tensor, fmt: str, pattern: str) -> DebugOut:
    return _debug_outputs(x, fmt, pattern)


@prepare_debug.register_kernel("cuda")
def _(x: torch.Tensor, fmt: str, pattern: str) -> DebugOut:
    if not dispatch.prep_on_kernel(x, fmt, pattern):
        return _prepare_debug_reference(x, fmt, pattern)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    outs = _debug_outputs(x2, fmt, pattern)
    torch.ops.sharq_C.prep_debug(x2, *outs, *dispatch.prep_values(fmt, pattern))
    return outs


# ----------------------------------------------------------------------------------------
# sharq::gemm
# ----------------------------------------------------------------------------------------
def _gemm_reference(
    x_hat: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor,
    bias: torch.Tensor | None, n: int, k: int, block: int, layout: int,
) -> torch.Tensor:
    return reference_gemm(x_hat, _canonical_payload(qweight, scales, tensor_scale, n, k, block, layout), bias)


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
    alpha: float,
    x_frag: int = 0,
) -> torch.Tensor:
    return _gemm_reference(_from_order(x_hat, x_frag), qweight, scales, tensor_scale, bias, n, k, block, layout)


@gemm.register_fake
def _(
    x_hat: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor,
    bias: torch.Tensor | None, n: int, n_pad: int, k: int, block: int, layout: int, alpha: float,
    x_frag: int = 0,
) -> torch.Tensor:
    return x_hat.new_empty((*x_hat.shape[:-1], n))


# The dequantized 16-bit weight is a transient workspace; bounding it keeps the large-M path's
# peak memory small (a 70B gate_up is 0.9 GiB in bf16: on a card filled to 0.95 by vLLM's KV
# cache, one unbounded workspace ran out of memory). Strips of 16 rows match the tiled layout.
DEQUANT_WORKSPACE_BYTES = 128 << 20


def _dequant_mm(x2: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """The large-M path: dequantize (e2m1 * block scale, exact in 16 bits) a bounded number of
    rows at a time, then cuBLAS with the tensor scale as its epilogue alpha."""
    p, k = packed, packed.k
    rows = max(16, DEQUANT_WORKSPACE_BYTES // (k * x2.element_size()) // 16 * 16)
    if rows >= p.n_pad:
        w = torch.empty((p.n_pad, k), dtype=x2.dtype, device=x2.device)
        torch.ops.sharq_C.dequant(p.qweight, p.scales, w, p.block)
        wt = w[: p.n].t()
        if bias is not None:
            return torch.addmm(bias, x2, wt, alpha=p.alpha)
        y = torch.empty((x2.shape[0], p.n), dtype=x2.dtype, device=x2.device)
        return torch.addmm(y, x2, wt, beta=0, alpha=p.alpha, out=y)  # beta = 0: y is not read
    y = torch.empty((x2.shape[0], p.n), dtype=x2.dtype, device=x2.device)
    w = torch.empty((rows, k), dtype=x2.dtype, device=x2.device)
    for r0 in range(0, p.n, rows):
        r1 = min(p.n, r0 + rows)
        s0, s1 = r0 // 16, (r1 + 15) // 16
        wc = w[: (s1 - s0) * 16]
        torch.ops.sharq_C.dequant(p.qweight[s0:s1], p.scales[s0:s1], wc, p.block)
        out = y[:, r0:r1]  # row-major with ld = n: cuBLAS writes it in place
        base = bias[r0:r1] if bias is not None else out
        torch.addmm(base, x2, wc[: r1 - r0].t(), beta=1 if bias is not None else 0, alpha=p.alpha, out=out)
    return y


def run_gemm_kernel(
    kernel: str, x2: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None, x_frag: int = 0
) -> torch.Tensor:
    """One CUDA GEMM path (``mma`` or ``dequant_mm``, dispatch.GEMM_KERNELS) on rows ``x2``
    [M, K] and a tiled weight (benchmarks and tests force a path through this; the op chooses
    by M). ``x_frag``: x2 as the preparation wrote it when asked for fragment order."""
    if _fragments(x2, x_frag) and kernel != "mma":
        x2, x_frag = xhat_from_fragments(x2), 0  # only gemm_mma's stream kernel reads fragments
    if kernel == "dequant_mm":
        return _dequant_mm(x2, packed, bias)
    if kernel != "mma":
        raise ValueError(f"sharq: unknown GEMM kernel {kernel!r}; known: {[g.name for g in dispatch.GEMM_KERNELS]}")
    out = torch.empty((x2.shape[0], packed.n), dtype=x2.dtype, device=x2.device)
    torch.ops.sharq_C.gemm_mma(
        x2, packed.qweight, packed.scales, packed.tensor_scale, bias, out, packed.n_pad, packed.block, x_frag)
    return out


@gemm.register_kernel("cuda")
def _(
    x_hat: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor,
    bias: torch.Tensor | None, n: int, n_pad: int, k: int, block: int, layout: int, alpha: float,
    x_frag: int = 0,
) -> torch.Tensor:
    if not dispatch.gemm_on_kernel(x_hat, layout == LAYOUT_TILED):
        return _gemm_reference(_from_order(x_hat, x_frag), qweight, scales, tensor_scale, bias, n, k, block, layout)
    return run_gemm(x_hat, PackedWeight(qweight, scales, tensor_scale, n, n_pad, k, block, layout, alpha), bias, x_frag)


def run_gemm(
    x_hat: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None, x_frag: int = 0
) -> torch.Tensor:
    """The GEMM kernel dispatch picks for x_hat's rows, where dispatch.gemm_on_kernel holds (see
    :func:`run_prep`): y [..., N]."""
    x2 = _rows(x_hat, packed.k)
    if bias is not None and bias.dtype != x2.dtype:
        bias = bias.to(x2.dtype)
    kernel = dispatch.gemm_kernel(x2.shape[0], packed.n_pad, dispatch.sm_count(x2.device))
    y = run_gemm_kernel(kernel.name, x2, packed, bias, x_frag)
    return y if x_hat.dim() == 2 else y.reshape(*x_hat.shape[:-1], packed.n)


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------
def sharq_gemm(
    x_hat: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None, x_frag: int = 0
) -> torch.Tensor:
    p = packed
    return torch.ops.sharq.gemm(x_hat, p.qweight, p.scales, p.tensor_scale, bias, *p.geometry, x_frag)  # type: ignore[no-any-return]


def sharq_gemm_rows(
    x_hat: torch.Tensor, parts: Sequence[PackedWeight], bias: torch.Tensor | None = None, x_frag: int = 0
) -> torch.Tensor:
    """y = x_hat @ [deQ(W_0); deQ(W_1); ...]^T + bias for a weight stored as row blocks that
    each carry their own FP32 tensor scale (the members of a fused qkv / gate_up layer whose
    NVFP4 checkpoint gave them different scales): one GEMM per block, outputs side by side.
    Exact on every path (a row's output depends only on that row's payload), and the kernels
    take any N, so nothing kernel-side changes; one block is exactly :func:`sharq_gemm`."""
    if len(parts) == 1:
        return sharq_gemm(x_hat, parts[0], bias, x_frag)
    ys, r0 = [], 0
    for p in parts:
        ys.append(sharq_gemm(x_hat, p, None if bias is None else bias[r0 : r0 + p.n], x_frag))
        r0 += p.n
    return torch.cat(ys, dim=-1)


def sharq_linear(
    x: torch.Tensor,
    packed: PackedWeight | Sequence[PackedWeight],
    bias: torch.Tensor | None = None,
    fmt: str = "nvfp4",
    pattern: str = "4:8-pairs",
    x_hat: torch.Tensor | None = None,
    *,
    act_scale: str = "token",
    x_frag: int = 0,
) -> torch.Tensor:
    """y = sharq_activation(x) @ deQ(W)^T + bias. Pass ``x_hat`` (from ``torch.ops.sharq.prepare``)
    to share one preparation between layers that read the same input (q/k/v, gate/up).
    ``packed``: one weight, or row blocks with their own tensor scales (:func:`sharq_gemm_rows`;
    the activations are prepared once for all of them). ``x_frag``: the most rows of x_hat (given
    or prepared here) in fragment order (module docstring; with row blocks, a value every block's
    GEMM reads: 16).
    ``act_scale="tensor"`` (one activation tensor scale, the paper's setting) prepares in PyTorch
    (the preparation kernel has per-token scales only); the GEMM is the same either way."""
    if x_hat is None:
        x_hat = torch.ops.sharq.prepare(x, fmt, pattern, act_scale=act_scale, x_frag=x_frag)
    if isinstance(packed, PackedWeight):
        return sharq_gemm(x_hat, packed, bias, x_frag)
    return sharq_gemm_rows(x_hat, packed, bias, x_frag)


def kernel_path_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(True, how) when the CUDA kernels serve ``device``; (False, why not) otherwise."""
    return dispatch.kernels_for(device)


def describe_kernel(device: torch.device | str | None = None, act_scale: str = "token") -> str:
    """One line for the startup log: which paths serve which M (independent of M)."""
    return dispatch.describe(device, act_scale)
