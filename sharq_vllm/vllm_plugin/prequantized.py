"""Loading pre-quantized SharQ checkpoints (written by ``sharq-vllm quantize``, issue 5).

The checkpoint's linear layers hold the packed payload (``weight_packed``, ``weight_scale``,
``weight_tensor_scale``) instead of 16-bit weights; :mod:`sharq_vllm.checkpoint` registers
and validates those parameters (contract: docs/CHECKPOINTS.md, "Loading in vLLM"). After
loading, a layer is in exactly the state the online method leaves it in, so ``apply`` is the
online method's.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers import linear as vllm_linear

from .linear_method import SharQLinearMethod

__all__ = ["SharQPrequantizedLinearMethod"]


class SharQPrequantizedLinearMethod(SharQLinearMethod):
    """SharQ linear layer whose payload comes from the checkpoint (no online quantization)."""

    uses_meta_device = False

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
        from sharq_vllm import checkpoint

        self._check_k(layer, input_size_per_partition, input_size)
        self._check_dtype(layer, params_dtype)
        checkpoint.create_packed_parameters(
            layer,
            prefix=self.prefix,
            input_size_per_partition=input_size_per_partition,
            output_partition_sizes=output_partition_sizes,
            input_size=input_size,
            options=self.options,
            weight_loader=extra_weight_attrs["weight_loader"],
        )
        layer.logical_widths = output_partition_sizes
        layer.input_size_per_partition = input_size_per_partition
        layer.output_size_per_partition = sum(output_partition_sizes)
        layer.orig_dtype = params_dtype

    def process_weights_after_loading(self, layer: Any) -> None:
        if getattr(layer, "_already_called_process_weights_after_loading", False):
            return
        from sharq_vllm import checkpoint

        payload = checkpoint.finalize_packed(layer, prefix=self.prefix, options=self.options)
        n, k = int(payload.codes.shape[0]), int(payload.codes.shape[1]) * 2
        # no amax all-reduce: the checkpoint already holds the global tensor scale
        self._install(layer, payload, (n, k), bytes_16=n * k * 2, source="checkpoint")


# vLLM routes a linear method's loads through the v2 weight loaders (BasevLLMParameter
# subclasses: per-shard packed K, group scales, per-tensor scales) only for registered classes
if hasattr(vllm_linear, "register_weight_loader_v2_supported_method"):
    vllm_linear.register_weight_loader_v2_supported_method(SharQPrequantizedLinearMethod)
elif SharQPrequantizedLinearMethod.__name__ not in vllm_linear.WEIGHT_LOADER_V2_SUPPORTED:
    vllm_linear.WEIGHT_LOADER_V2_SUPPORTED.append(SharQPrequantizedLinearMethod.__name__)
