"""The ops that produce SharQ's activations, as the fused producer + preparation kernels compute them.

In a Llama-style decoder every qkv and gate/up projection reads the output of vLLM's RMSNorm
(``vllm.ir.ops.rms_norm`` / ``fused_add_rms_norm``: the input and post-attention norms) and every
down projection reads SiLU(gate) * up. SharQ's compile pass (sharq_vllm/vllm_plugin/fusion.py)
runs these inside the preparation kernel (sharq_vllm/csrc/prep.cu, ``rms_norm_row`` and
``silu_mul_chunk``), which must then agree with something bit for bit. This module is that
something: vLLM's semantics, with what they leave open pinned down.

RMSNorm (:func:`rms_norm`)::

    s        = x (+ residual)                   FP32; residual_out = s rounded to x.dtype
    ss       = sum(s * s)                        FP32, in a FIXED order (below)
    inv      = 1 / sqrt(ss / K + eps)            IEEE division and square root, each rounded
    y        = round(s * inv) to weight.dtype, times the weight, rounded to x.dtype

vLLM's own implementations sum the squares in whatever order their kernel reduces in (and use
an approximate rsqrt), so they agree with each other only to tolerances (``vllm/ir/ops``:
atol 1e-2 for fp16); a float sum depends on its order, so a bit-exact contract needs one. The
order here is a balanced pairwise tree over the channels in order, zero-padded to a power of
two: a thread's 8 channels, then a warp's lanes by an xor butterfly with rising offsets, then
the warps, is exactly that tree (adding +0 to a partial sum changes nothing). Everything else
is a correctly rounded FP32 operation, the same on CPU and GPU (evaluated in float64 and rounded
once where PyTorch's FP32 op is not correctly rounded: its CPU sqrt).

SiLU * mul (:func:`silu_and_mul`): y = round(round(silu(g)) * u), silu(g) = g / (1 + exp(-g)) in
FP32: eager PyTorch's ``F.silu(g) * u`` and vLLM's CUDA ``silu_and_mul`` kernel. Elementwise, so
no order to pin; the one open part is exp: the kernel uses CUDA's ``expf``, as PyTorch's CUDA silu
does, so kernel and reference agree bit for bit when the reference runs on the GPU; on the CPU
PyTorch's exp is another implementation (a last-bit difference in silu(g) before it is rounded
to 16 bits, rarely visible).
"""

from __future__ import annotations

import torch


def tree_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by a balanced pairwise tree (adjacent pairs first), zero-padded to
    a power of two; keeps the dim (size 1)."""
    n = v.shape[-1]
    p = 1 << max(0, (n - 1).bit_length())
    if p != n:
        v = torch.nn.functional.pad(v, (0, p - n))
    while v.shape[-1] > 1:
        v = v[..., 0::2] + v[..., 1::2]
    return v


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(normalized x, residual_out): vLLM's RMSNorm over the last dim with the summation order
    above; ``residual`` given: x + residual is normalized and returned as residual_out (rounded
    to x.dtype), else residual_out is None."""
    if x.shape[-1] != weight.numel():
        raise ValueError(f"sharq: norm weight has {weight.numel()} channels, x has {x.shape[-1]}")
    s = x.float()
    residual_out = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"sharq: residual shape {tuple(residual.shape)} differs from x's {tuple(x.shape)}")
        s = s + residual.float()
        residual_out = s.to(x.dtype)
    ss = tree_sum(s * s)
    # ss / K, + eps, sqrt, 1 / .: each an FP32 operation correctly rounded, evaluated in float64
    # and rounded once (exact: float64 holds over twice FP32's digits). Not torch's FP32 ops:
    # its CPU sqrt is not correctly rounded (torch 2.13: ~17% of inputs one unit off, which
    # flipped an output's rounding once in ~100 GPU bit-exactness runs), and on CUDA
    # `t / python_scalar` becomes `t * (1 / scalar)`, another rounding.
    k = torch.tensor(float(s.shape[-1]), dtype=torch.float64, device=x.device)
    eps32 = torch.tensor(eps, dtype=torch.float32, device=x.device).double()
    var = (ss.double() / k).float()
    root = torch.sqrt((var.double() + eps32).float().double()).float()
    inv = (torch.ones_like(root, dtype=torch.float64) / root.double()).float()
    y = (s * inv).to(weight.dtype)
    return (y.float() * weight.float()).to(weight.dtype).to(x.dtype), residual_out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:], d = x.shape[-1] // 2, rounded as eager PyTorch rounds it."""
    d = x.shape[-1] // 2
    if x.shape[-1] != 2 * d:
        raise ValueError(f"sharq: silu_and_mul needs an even last dim, got {x.shape[-1]}")
    return torch.nn.functional.silu(x[..., :d]) * x[..., d:]
