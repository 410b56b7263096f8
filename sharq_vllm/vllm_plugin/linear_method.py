"""``SharQLinearMethod``: online SharQ quantization of a 16-bit linear layer.

Structure mirrors vLLM's online FP8 linear methods
(``vllm/model_executor/layers/quantization/online/fp8.py``):

* ``create_weights`` registers the 16-bit ``weight`` exactly as the unquantized method does
  (on the meta device with vLLM's layer-wise online processing where this vLLM has it, so a
  layer's 16-bit weight only exists while that layer is being loaded);
* ``process_weights_after_loading`` quantizes it once into the shared FP4 payload
  (E2M1 codes + E4M3 per-32 scales + FP32 tensor scale; fused qkv / gate_up get one payload
  over the fused rows; under TP the tensor amax is MAX-all-reduced over the TP group so every
  rank holds exactly its slice of the TP=1 payload), then deletes the 16-bit weight;
* ``apply`` decomposes the activations (sparse backbone + dense residual, both FP4) and
  multiplies, through ``sharq_vllm.ops`` (which ``sharq_vllm.kernels.dispatch`` routes to the
  CUDA kernels or the PyTorch reference).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import LinearMethodBase
from vllm.model_executor.parameter import ModelWeightParameter
from vllm.model_executor.utils import set_weight_attrs

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch

from ..options import SharQOptionError, SharQOptions
from . import compat, stats

logger = init_logger("vllm.sharq")

__all__ = ["SharQLinearMethod"]

# The SharQ linear runs as one custom op that is opaque to torch.compile and finds its layer by
# NAME at run time. Nothing layer-specific (format, pattern, kernel layout, the FP32 weight
# scale) may become a constant of the compiled graph: vLLM's compile cache is keyed on the
# model's config, not on its weights or on --hf-overrides, so a cached graph with baked-in
# scales would silently serve another checkpoint (or other options) wrong. The name is the
# layer's prefix, stable across processes; the lookup goes through vLLM's forward context
# (per engine, like attention layers), with a process-wide registry as the fallback for code
# that runs a layer outside an engine (tests, tools).
_LAYERS: dict[str, weakref.ReferenceType[torch.nn.Module]] = {}
_ANONYMOUS = itertools.count(1)


def _layer_for(name: str) -> torch.nn.Module:
    layer = compat.forward_context_layer(name)
    if layer is None:
        ref = _LAYERS.get(name)
        layer = ref() if ref is not None else None
    if layer is None:
        raise RuntimeError(f"sharq: no live SharQ layer named {name!r}")
    return layer


def layer_options(name: str) -> SharQOptions:
    """The options of the live SharQ layer ``name``."""
    layer: Any = _layer_for(name)
    options: SharQOptions = layer.quant_method.options
    return options


# The ops below run once per SharQ linear per uncaptured step (prefill, mixed batches above the
# CUDA-graph sizes), so their host time is the layer's launch overhead: they are registered with
# vLLM's direct_register_custom_op (compat.register_op), and a layer whose weight is packed for
# the kernels calls them directly (ops.run_*) under the decisions its KernelPlan fixed at load;
# anything else goes through sharq_vllm.ops' general ops (same kernels, or the reference).
_LIB = torch.library.Library("sharq_plugin", "FRAGMENT")  # owns the ops: kept alive with the module
# x_hat between a preparation and its GEMM, in every op below: fragment order (what the stream GEMM
# reads fastest; sharq_vllm/ops.py) up to the layer's KernelPlan.x_frag rows, or up to
# dispatch.serving_x_frag()'s for a layer without a plan (what every GEMM reads).
GENERAL_X_FRAG = dispatch.serving_x_frag()


@dataclass(frozen=True)
class KernelPlan:
    """What a layer's calls need not decide again: its weight is one payload packed for the
    CUDA GEMMs (dispatch.weight_on_kernel held at load, so the kernels serve its device), and
    for activations of ``dtype`` the preparation kernel takes its K (``prep``; with the RMSNorm
    in front too: ``norm``), with the kernel's format / pattern / block arguments ``codes``;
    x_hat travels in fragment order up to ``x_frag`` rows (dispatch.serving_x_frag: what its GEMM
    reads on this device)."""

    dtype: torch.dtype
    prep: bool
    norm: bool
    codes: tuple[int, int, int, int]
    weight: ops.PackedWeight  # the layer's buffers when the plan was made (see _kernel_weight)
    x_frag: int


def kernel_plan(parts: list[ops.PackedWeight], options: SharQOptions, act_dtype: torch.dtype | None) -> KernelPlan | None:
    """The layer's plan (None: every call takes the general ops)."""
    if len(parts) != 1 or parts[0].layout != ops.LAYOUT_TILED or act_dtype not in dispatch.KERNEL_DTYPES:
        return None
    k, fmt, pattern, act = parts[0].k, options.format, options.pattern, options.act_scale
    return KernelPlan(
        dtype=act_dtype,
        prep=dispatch.prep_takes(k, act_dtype, fmt, pattern, act),
        norm=dispatch.prep_norm_takes(k, act_dtype, act_dtype, fmt, pattern, act),
        codes=dispatch.prep_values(fmt, pattern),
        weight=parts[0],
        x_frag=dispatch.serving_x_frag(parts[0].n_pad, parts[0].qweight.device),
    )


def _kernel_weight(layer: Any, plan: KernelPlan) -> ops.PackedWeight:
    """The plan's PackedWeight while the layer still holds those very buffers (they are replaced
    only by a module move or a reload); otherwise a fresh one, kept in a new plan."""
    w, b = plan.weight, layer._buffers
    if b.get("sharq_qweight") is w.qweight and b.get("sharq_scales") is w.scales and b.get("sharq_tensor_scale") is w.tensor_scale:
        return w
    w = packed_weight(layer)
    layer.sharq_plan = replace(plan, weight=w)
    return w


def _layer_and_plan(layer_name: str) -> tuple[Any, KernelPlan | None]:
    layer: Any = _layer_for(layer_name)
    return layer, getattr(layer, "sharq_plan", None)


def _x_frag(plan: KernelPlan | None) -> int:
    """The fragment-order rows of the layer's x_hat: its producer and its GEMM ask for the same."""
    return GENERAL_X_FRAG if plan is None else plan.x_frag


def _gemm(layer: Any, plan: KernelPlan | None, x_hat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if plan is not None and x_hat.dtype is plan.dtype:
        return ops.run_gemm(x_hat, _kernel_weight(layer, plan), bias, plan.x_frag)
    parts = packed_weights(layer)
    return ops.sharq_linear(x_hat, parts[0] if len(parts) == 1 else parts, bias, x_hat=x_hat, x_frag=_x_frag(plan))


def _sharq_plugin_linear(x: torch.Tensor, bias: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    """One SharQ linear (preparation + GEMM): opaque to torch.compile (CUDA-graph capturable:
    no host syncs inside), counts calls."""
    layer, plan = _layer_and_plan(layer_name)
    if plan is not None and plan.prep and x.dtype is plan.dtype:
        x_hat = ops.run_prep(x, plan.codes, plan.x_frag)
    else:
        o: SharQOptions = layer.quant_method.options
        x_hat = torch.ops.sharq.prepare(x, o.format, o.pattern, act_scale=o.act_scale, x_frag=_x_frag(plan))
    y = _gemm(layer, plan, x_hat, bias)
    stats.record_forward(x.shape[0] if x.dim() > 1 else 1)
    return y


def _linear_fake(x: torch.Tensor, bias: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    layer: Any = _layer_for(layer_name)
    return x.new_empty((*x.shape[:-1], int(layer.output_size_per_partition)))


# The same linear split in two where SharQ's compile pass (fusion.py) moved the preparation into
# the op that produces its input: the RMSNorm / SiLU * mul + preparation ops (x_hat from the
# producer's input; the layer name gives the options, as above) and the GEMM alone on x_hat.
# Inserted by the pass only.
def _rms_norm_prepare(x: torch.Tensor, weight: torch.Tensor, eps: float, layer_name: str) -> torch.Tensor:
    layer, plan = _layer_and_plan(layer_name)
    if plan is not None and plan.norm and x.dtype is plan.dtype and weight.dtype is plan.dtype:
        return ops.run_prep_norm(x, None, weight, eps, plan.codes, plan.x_frag)[0]
    o: SharQOptions = layer.quant_method.options
    return torch.ops.sharq.prepare_rms_norm(x, weight, eps, o.format, o.pattern, o.act_scale, _x_frag(plan))  # type: ignore[no-any-return]


def _rms_norm_prepare_fake(x: torch.Tensor, weight: torch.Tensor, eps: float, layer_name: str) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _add_rms_norm_prepare(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, layer_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    layer, plan = _layer_and_plan(layer_name)
    if (plan is not None and plan.norm and x.dtype is plan.dtype and residual.dtype is plan.dtype
            and weight.dtype is plan.dtype):
        return ops.run_prep_norm(x, residual, weight, eps, plan.codes, plan.x_frag)  # type: ignore[return-value]
    o: SharQOptions = layer.quant_method.options
    return torch.ops.sharq.prepare_add_rms_norm(  # type: ignore[no-any-return]
        x, residual, weight, eps, o.format, o.pattern, o.act_scale, _x_frag(plan))


def _add_rms_norm_prepare_fake(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, layer_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


def _silu_mul_prepare(x: torch.Tensor, layer_name: str) -> torch.Tensor:
    layer, plan = _layer_and_plan(layer_name)
    if plan is not None and plan.prep and x.dtype is plan.dtype:
        return ops.run_prep_silu_mul(x, plan.codes, plan.x_frag)
    o: SharQOptions = layer.quant_method.options
    return torch.ops.sharq.prepare_silu_mul(x, o.format, o.pattern, o.act_scale, _x_frag(plan))  # type: ignore[no-any-return]


def _silu_mul_prepare_fake(x: torch.Tensor, layer_name: str) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _sharq_plugin_linear_prepared(x_hat: torch.Tensor, bias: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    """``sharq_plugin::linear`` after its preparation: the GEMM on x_hat."""
    layer, plan = _layer_and_plan(layer_name)
    y = _gemm(layer, plan, x_hat, bias)
    stats.record_forward(x_hat.shape[0] if x_hat.dim() > 1 else 1)
    return y


def _linear_prepared_fake(x_hat: torch.Tensor, bias: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    layer: Any = _layer_for(layer_name)
    return x_hat.new_empty((*x_hat.shape[:-1], int(layer.output_size_per_partition)))


for _name, _impl, _fake in (
    ("linear", _sharq_plugin_linear, _linear_fake),
    ("rms_norm_prepare", _rms_norm_prepare, _rms_norm_prepare_fake),
    ("add_rms_norm_prepare", _add_rms_norm_prepare, _add_rms_norm_prepare_fake),
    ("silu_mul_prepare", _silu_mul_prepare, _silu_mul_prepare_fake),
    ("linear_prepared", _sharq_plugin_linear_prepared, _linear_prepared_fake),
):
    compat.register_op(_LIB, _name, _impl, _fake)


def _buffer_names(part: int) -> tuple[str, str, str]:
    names = ("sharq_qweight", "sharq_scales", "sharq_tensor_scale")
    return names if part == 0 else (f"{names[0]}_{part}", f"{names[1]}_{part}", f"{names[2]}_{part}")


def packed_weights(layer: Any) -> list[ops.PackedWeight]:
    """The layer's weight as the op layer takes it: its buffers (see ``_install``) and the
    geometry kept beside them; one part, or one per row block with its own tensor scale (a
    fused layer from an NVFP4 checkpoint whose members carry different scales)."""
    return [
        ops.PackedWeight(*(getattr(layer, name) for name in _buffer_names(i)), *geometry)
        for i, geometry in enumerate(layer.sharq_geometries)
    ]


def packed_weight(layer: Any) -> ops.PackedWeight:
    """The layer's weight when it is one part (every layer but the per-member case above)."""
    parts = packed_weights(layer)
    if len(parts) != 1:
        raise ValueError(f"sharq: layer holds {len(parts)} row blocks with their own tensor scales; "
                         "use packed_weights()")
    return parts[0]


class SharQLinearMethod(LinearMethodBase):
    """Online SharQ W4A4 for one linear layer (q/k/v, o, gate/up, down)."""

    # layer-wise online quantization (weights on meta until loaded) where vLLM supports it
    uses_meta_device: bool = compat.get_online_processing_initializer() is not None
    #: the preset named on /metrics (None: the one the options are, else "custom"; stats.py)
    preset: str | None = None

    def __init__(self, options: SharQOptions, prefix: str = "") -> None:
        self.options = options
        self.prefix = prefix

    # -- loading ---------------------------------------------------------------------------
    def create_weights(
        self,
        layer: Any,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        self._check_k(layer, input_size_per_partition, input_size)
        self._check_dtype(layer, params_dtype)
        output_size_per_partition = sum(output_partition_sizes)
        weight_loader = extra_weight_attrs.pop("weight_loader")
        layer.logical_widths = output_partition_sizes
        layer.input_size_per_partition = input_size_per_partition
        layer.output_size_per_partition = output_size_per_partition
        layer.orig_dtype = params_dtype
        init_online = compat.get_online_processing_initializer() if self.uses_meta_device else None
        weight = ModelWeightParameter(
            data=torch.empty(
                output_size_per_partition,
                input_size_per_partition,
                dtype=params_dtype,
                device="meta" if init_online is not None else None,
            ),
            input_dim=1,
            output_dim=0,
            weight_loader=weight_loader,
        )
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)
        if init_online is not None:
            init_online(layer)
        self._register_name(layer)

    def _register_name(self, layer: Any) -> None:
        """Give the layer its run-time name (see _layer_for); registered in the engine's
        forward context while the model is built (create_weights) and again after loading."""
        name = getattr(layer, "sharq_layer_name", None) or "sharq:" + (
            self.prefix or f"anonymous.{next(_ANONYMOUS)}"
        )
        layer.sharq_layer_name = name
        _LAYERS[name] = weakref.ref(layer)
        compat.register_forward_context_layer(name, layer)

    def _check_k(self, layer: Any, input_size_per_partition: int, input_size: int) -> None:
        """Startup error unless K per TP shard is a multiple of every block SharQ uses (so
        no block straddles a shard)."""
        k_mult = self.options.required_k_multiple
        tp_size = int(getattr(layer, "tp_size", 1))
        if input_size_per_partition % k_mult != 0:
            sharded = input_size_per_partition != input_size
            where = (
                f"its input dim {input_size} is split over {tp_size} tensor-parallel ranks "
                f"into {input_size_per_partition}-wide shards, so a {k_mult}-wide block "
                "would straddle a shard"
                if sharded and input_size % k_mult == 0
                else f"its input dim (K per shard) is {input_size_per_partition}"
            )
            raise SharQOptionError(
                f"sharq: cannot quantize layer {self.prefix or type(layer).__name__}: {where}; "
                f"SharQ with {self.options.summary()} needs K per shard to be a multiple of "
                f"{k_mult}. Skip it with skip_layers=[\"{self.prefix.rsplit('.', 1)[-1] or 'NAME'}\"]"
                " or use another tensor-parallel size."
            )

    def _check_dtype(self, layer: Any, params_dtype: torch.dtype) -> None:
        """Startup error (before any weight is read) for a 16-bit weight dtype SharQ cannot
        quantize, instead of a failure inside the first load."""
        from sharq_vllm.reference import SUPPORTED_DTYPES

        if params_dtype not in SUPPORTED_DTYPES:
            raise SharQOptionError(
                f"sharq: cannot quantize layer {self.prefix or type(layer).__name__}: weight dtype "
                f"{params_dtype} is not supported; serve with --dtype bfloat16, float16 or float32"
            )

    def _is_tp_sharded(self, layer: Any) -> bool:
        if int(getattr(layer, "tp_size", 1)) == 1:
            return False
        row = getattr(layer, "input_size", None) != layer.input_size_per_partition
        col = getattr(layer, "output_size", None) != layer.output_size_per_partition
        return bool(row or col)

    def process_weights_after_loading(self, layer: Any) -> None:
        if getattr(layer, "_already_called_process_weights_after_loading", False):
            return
        weight = layer.weight
        if weight.device.type == "meta":
            raise RuntimeError(f"sharq: weight of {self.prefix} was never loaded")
        w = weight.data
        amax = w.detach().float().abs().amax().reshape(1)
        if self._is_tp_sharded(layer):
            amax = compat.all_reduce_max_tp(amax)
        payload = self.options.quantize_weight(w, tensor_amax=amax)
        bytes_16 = w.numel() * 2  # the same weights in 16 bits, also when the model runs in float32
        shape = (int(w.shape[0]), int(w.shape[1]))
        # free the 16-bit weight: the payload is all the layer keeps
        del layer.weight
        del weight, w
        self._install(layer, payload, shape, bytes_16, source="online")

    def _install(
        self, layer: Any, payload: Any, shape: tuple[int, int], bytes_16: int, source: str, how: str | None = None
    ) -> None:
        """Pack the payload for the op layer and attach it to the layer (shared by the online
        and the pre-quantized paths): three non-persistent buffers (moved by ``.to()``, counted
        as the layer's memory, never loaded from files) and the geometry beside them.
        ``payload``: one payload, or a list of row blocks with their own tensor scales (three
        buffers each, see :func:`packed_weights`). ``how``: the load-log label (default: the
        options')."""
        act_dtype = getattr(layer, "orig_dtype", None)  # the model's dtype: the activations'
        payloads = payload if isinstance(payload, list) else [payload]
        parts = [ops.pack_weight(p, act_dtype=act_dtype) for p in payloads]
        for i, packed in enumerate(parts):
            for name, t in zip(_buffer_names(i), (packed.qweight, packed.scales, packed.tensor_scale), strict=True):
                layer.register_buffer(name, t, persistent=False)
        layer.sharq_geometries = [p.geometry for p in parts]
        layer.sharq_plan = kernel_plan(parts, self.options, act_dtype)
        self._register_name(layer)
        packed = parts[0]
        device = packed.qweight.device
        if device.type == "cuda":
            stats.log_once(f"describe:{device}", dispatch.describe(device, self.options.act_scale))
        if how is None:
            how = self.options.label() + ("" if source == "online" else f", from {source}")
        if len(parts) > 1:
            how += f", {len(parts)} row blocks with their own tensor scales"
        stats.record_quantized(
            self.prefix or type(layer).__name__, shape, bytes_16, sum(p.nbytes for p in parts), how,
            kernel=dispatch.layer_label(packed.layout == ops.LAYOUT_TILED, device, self.options.act_scale, act_dtype),
            options=self.options, preset=self.preset,
        )
        layer._already_called_process_weights_after_loading = True

    # -- forward ---------------------------------------------------------------------------
    def apply(
        self,
        layer: Any,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.ops.sharq_plugin.linear(x, bias, layer.sharq_layer_name)  # type: ignore[no-any-return]
