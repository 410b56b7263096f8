"""Thin adapter between the linear method and :mod:`sharq_vllm.ops` (the op layer).

The op layer dispatches CPU -> reference numerics, CUDA -> kernels when built (else the
reference). Until/unless ``sharq_vllm.ops`` is importable, the reference is called directly
so the plugin keeps working.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch

from .options import SharQOptions


def _ops() -> Any | None:
    try:
        from sharq_vllm import ops
    except ImportError:
        return None
    if not (hasattr(ops, "pack_weight") and hasattr(ops, "sharq_linear")):
        return None
    return ops


def quantize(w: torch.Tensor, opts: SharQOptions, tensor_amax: torch.Tensor | None) -> Any:
    """The shared FP4 weight payload (reference numerics; quantization happens once)."""
    from sharq_vllm import reference

    return reference.quantize_weight(
        w, block=opts.weight_block, rounding=opts.weight_rounding, tensor_amax=tensor_amax
    )


def pack(payload: Any) -> Any:
    ops = _ops()
    return ops.pack_weight(payload) if ops is not None else payload


def _accepts_act_scale(fn: Any) -> bool:
    try:
        return "act_scale" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def linear(x: torch.Tensor, packed: Any, bias: torch.Tensor | None, opts: SharQOptions) -> torch.Tensor:
    ops = _ops()
    if ops is None:
        from sharq_vllm import reference

        return reference.apply_linear(x, packed, bias, opts.format, opts.pattern, act_scale=opts.act_scale)
    if opts.act_scale == "token":
        return ops.sharq_linear(x, packed, bias, opts.format, opts.pattern)
    if _accepts_act_scale(ops.sharq_linear):
        return ops.sharq_linear(x, packed, bias, opts.format, opts.pattern, act_scale=opts.act_scale)
    # per-tensor activation scale (the paper's exact setting): reference preparation, then
    # the op layer's GEMM on the shared payload
    from sharq_vllm import reference

    x_hat = reference.sharq_activation(x, opts.format, opts.pattern, act_scale=opts.act_scale)
    return ops.sharq_gemm(x_hat, packed, bias)


def kernel_path_available(device: torch.device) -> tuple[bool, str]:
    ops = _ops()
    if ops is None or not hasattr(ops, "kernel_path_available"):
        return False, "sharq_vllm.ops is not available"
    ok, why = ops.kernel_path_available(device)
    return bool(ok), str(why)


def tensors_of(obj: Any) -> list[torch.Tensor]:
    """The tensors a packed weight holds (dataclass fields, attributes, or itself)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        vals = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, (list, tuple)):
        vals = list(obj)
    else:
        vals = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    for v in vals:
        for t in tensors_of(v) if not isinstance(v, torch.Tensor) else [v]:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_of(obj))


def kernel_label(packed: Any) -> str:
    """Which implementation this layer's SharQ linear runs on (for the per-layer load log)."""
    layout = getattr(packed, "layout", None)
    ops = _ops()
    if ops is not None and layout == getattr(ops, "LAYOUT_TILED", object()):
        dm = int(ops.CONFIG.get("decode_max_m", 16))
        return f"kernel=cuda prep + GEMM (decode kernel M<={dm}, wgmma kernel above)"
    device = getattr(getattr(packed, "qweight", None), "device", None)
    return f"kernel=reference ({device.type if device is not None else 'cpu'})"
