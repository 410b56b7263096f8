"""Serving NVFP4 checkpoints of other tools (ModelOpt, compressed-tensors) with SharQ
activations: ``--quantization sharq`` on such a folder.

The checkpoint's FP4 weights are used as stored: they are SharQ's ``weight_block: 16`` payload
(:mod:`sharq_vllm.checkpoint.nvfp4`). ``create_weights`` registers the checkpoint's own tensors
(``weight`` / ``weight_packed``, ``weight_scale``, ``weight_scale_2`` / ``weight_global_scale``,
and the static input scale, which is read and dropped: SharQ's activation scales are dynamic)
with vLLM's v2 weight loaders, which stack q/k/v and gate/up and shard under tensor parallelism.
``process_weights_after_loading`` turns each fused member into a payload with its own tensor
scale, joins the members whose scales are equal (the tools' default: one payload, as a SharQ
checkpoint has) and hands the result to the online method's ``_install``; members with different
scales stay separate row blocks (``ops.sharq_gemm_rows``), so every member's weights are exactly
its checkpoint's, on the reference and the CUDA path alike.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers import linear as vllm_linear
from vllm.model_executor.parameter import (
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)

from ..checkpoint.format import SCALE_DTYPE
from ..checkpoint.nvfp4 import NVFP4_BLOCK, Nvfp4Source, split_by_tensor_scale
from ..options import SharQOptionError, SharQOptions
from .linear_method import SharQLinearMethod
from .prequantized import _NAN_E4M3, _checked_loader, _members, check_shards_loaded

__all__ = ["SharQNvfp4LinearMethod"]


class SharQNvfp4LinearMethod(SharQLinearMethod):
    """A SharQ linear layer whose weights come from a ModelOpt / compressed-tensors NVFP4
    checkpoint (no quantization at load)."""

    uses_meta_device = False

    def __init__(self, options: SharQOptions, prefix: str, source: Nvfp4Source, preset: str | None = None) -> None:
        """``preset``: the SharQ method serving the checkpoint (``sharq``, ``sharq-plus``), whose
        activation options these are; /metrics names it."""
        if options.weight_block != NVFP4_BLOCK:
            raise SharQOptionError(f"sharq: NVFP4 checkpoint weights have weight_block {NVFP4_BLOCK}, "
                                   f"options say {options.weight_block}")
        super().__init__(options, prefix)
        self.source = source
        self.preset = preset

    def _check_k(self, layer: Any, input_size_per_partition: int, input_size: int) -> None:
        """K (per TP shard) must split into the checkpoint's 16-wide weight groups, and into
        SharQ's activation blocks, which are wider (nvfp4 with a sparse backbone: 32)."""
        name = self.prefix or type(layer).__name__
        k, need = input_size_per_partition, self.options.required_k_multiple
        sharded = f" ({input_size} split over {layer.tp_size} tensor-parallel ranks)" if k != input_size else ""
        if k % NVFP4_BLOCK:
            raise SharQOptionError(
                f"sharq: cannot serve layer {name}: its input dim per shard is {k}{sharded}, not a multiple "
                f"of the checkpoint's NVFP4 weight group ({NVFP4_BLOCK}); use another tensor-parallel size"
            )
        if k % need:
            raise SharQOptionError(
                f"sharq: cannot serve layer {name}: its input dim per shard is {k}{sharded}. The NVFP4 "
                f"weights need a multiple of {NVFP4_BLOCK} (met), but SharQ's activation blocks "
                f"({self.options.format} {self.options.pattern}: backbone blocks of "
                f"{self.options.backbone_block} channels) need a multiple of {need}; serve this "
                "checkpoint without --quantization (vLLM's NVFP4) or with another tensor-parallel size"
            )

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
        src, loader = self.source, extra_weight_attrs["weight_loader"]
        n, k = int(sum(output_partition_sizes)), int(input_size_per_partition)
        members = _members(self.prefix, len(output_partition_sizes))
        shards = len(output_partition_sizes)

        def checked(suffix: str, dtype: torch.dtype, cols: int | None) -> Any:
            return _checked_loader(loader, members, suffix, dtype, cols)

        params = {
            src.packed: ModelWeightParameter(
                data=torch.zeros(n, k // 2, dtype=torch.uint8), input_dim=1, output_dim=0,
                weight_loader=checked(src.packed, torch.uint8, input_size // 2),
            ),
            src.scale: GroupQuantScaleParameter(
                data=torch.full((n, k // NVFP4_BLOCK), _NAN_E4M3[0], dtype=torch.uint8).view(SCALE_DTYPE),
                input_dim=1, output_dim=0,
                weight_loader=checked(src.scale, SCALE_DTYPE, input_size // NVFP4_BLOCK),
            ),
            src.global_scale: PerTensorScaleParameter(
                data=torch.full((shards,), float("nan"), dtype=torch.float32),
                weight_loader=checked(src.global_scale, torch.float32, None),
            ),
            # the static activation scale (W4A4 checkpoints): loaded so the names resolve, unused
            src.input_scale: PerTensorScaleParameter(
                data=torch.full((shards,), float("nan"), dtype=torch.float32), weight_loader=loader,
            ),
        }
        for name, param in params.items():
            layer.register_parameter(name, param)
        layer.sharq_output_partition_sizes = list(output_partition_sizes)
        layer.logical_widths = output_partition_sizes
        layer.input_size_per_partition = input_size_per_partition
        layer.output_size_per_partition = n
        layer.orig_dtype = params_dtype

    def process_weights_after_loading(self, layer: Any) -> None:
        if getattr(layer, "_already_called_process_weights_after_loading", False):
            return
        src = self.source
        packed = getattr(layer, src.packed).data
        scale = getattr(layer, src.scale).data
        raw = getattr(layer, src.global_scale).data
        sizes = list(layer.sharq_output_partition_sizes)
        members = _members(self.prefix, len(sizes))
        check_shards_loaded(self.prefix, members, sizes, scale, raw, (src.scale, src.global_scale))
        payloads, start = [], 0
        for i, (member, size) in enumerate(zip(members, sizes, strict=True)):
            rows = slice(start, start + size)
            payloads.append(src.payload(packed[rows], scale[rows], raw[i : i + 1], f"{member}.{src.global_scale}"))
            start += size
        parts = split_by_tensor_scale(payloads)
        for name in src.suffixes:
            delattr(layer, name)
        n, k = int(packed.shape[0]), int(packed.shape[1]) * 2
        o = self.options
        how = f"{o.format} {o.pattern} act={o.act_scale}, w16 weights as stored in the {src.label}"
        self._install(layer, parts if len(parts) > 1 else parts[0], (n, k), bytes_16=n * k * 2,
                      source=src.label, how=how)


# vLLM routes loads through the v2 weight loaders (BasevLLMParameter subclasses) only for
# registered linear methods
if hasattr(vllm_linear, "register_weight_loader_v2_supported_method"):
    vllm_linear.register_weight_loader_v2_supported_method(SharQNvfp4LinearMethod)
elif SharQNvfp4LinearMethod.__name__ not in vllm_linear.WEIGHT_LOADER_V2_SUPPORTED:
    vllm_linear.WEIGHT_LOADER_V2_SUPPORTED.append(SharQNvfp4LinearMethod.__name__)
