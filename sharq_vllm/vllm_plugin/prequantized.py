"""Loading pre-quantized SharQ checkpoints (written by ``sharq-vllm quantize``) into vLLM's layers.

The checkpoint's linear layers hold the packed payload (``weight_packed``, ``weight_scale``,
``weight_tensor_scale``) instead of 16-bit weights. ``create_weights`` registers those three
parameters with vLLM's own (v2) weight loaders, which shard them under tensor parallelism;
``process_weights_after_loading`` checks every shard arrived and hands the payload to the online
method's ``_install``, so a loaded layer ends in exactly the state online quantization leaves it
in and ``apply`` is the online method's. Format and validation: :mod:`sharq_vllm.checkpoint`
(contract: docs/CHECKPOINTS.md, "Loading in vLLM").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from vllm.model_executor.layers import linear as vllm_linear
from vllm.model_executor.parameter import (
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)

from ..checkpoint.format import (
    PACKED,
    PAYLOAD_SUFFIXES,
    SCALE,
    SCALE_DTYPE,
    TENSOR_SCALE,
    CheckpointError,
    dtype_name,
    expected_tensors,
    fused_members,
    payload_from_tensors,
)
from ..checkpoint.validate import shared_tensor_scale, validate_loaded
from ..formats import QuantizedBlocks
from ..options import SharQOptions
from .linear_method import SharQLinearMethod

__all__ = [
    "SharQPrequantizedLinearMethod",
    "check_shards_loaded",
    "create_packed_parameters",
    "finalize_packed",
]


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
        self._check_k(layer, input_size_per_partition, input_size)
        self._check_dtype(layer, params_dtype)
        create_packed_parameters(
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
        payload = finalize_packed(layer, prefix=self.prefix, options=self.options)
        n, k = int(payload.codes.shape[0]), int(payload.codes.shape[1]) * 2
        # no amax all-reduce: the checkpoint already holds the global tensor scale
        self._install(layer, payload, (n, k), bytes_16=n * k * 2, source="checkpoint")


# vLLM routes a linear method's loads through the v2 weight loaders (BasevLLMParameter
# subclasses: per-shard packed K, group scales, per-tensor scales) only for registered classes
if hasattr(vllm_linear, "register_weight_loader_v2_supported_method"):
    vllm_linear.register_weight_loader_v2_supported_method(SharQPrequantizedLinearMethod)
elif SharQPrequantizedLinearMethod.__name__ not in vllm_linear.WEIGHT_LOADER_V2_SUPPORTED:
    vllm_linear.WEIGHT_LOADER_V2_SUPPORTED.append(SharQPrequantizedLinearMethod.__name__)


# ---------------------------------------------------------------------------------------------
# the payload parameters of one layer
# ---------------------------------------------------------------------------------------------
_NAN_E4M3 = (0x7F, 0xFF)  # E4M3 NaN codes: the quantizer never writes them; marks unloaded rows

def _members(prefix: str, n_shards: int) -> list[str]:
    """Checkpoint module names of the logical shards of vLLM layer ``prefix`` (for messages)."""
    members = fused_members(prefix)
    if len(members) == n_shards:
        return list(members)
    return [prefix] if n_shards == 1 else [f"{prefix}[{i}]" for i in range(n_shards)]


def _shard_index(shard_id: Any) -> int:
    if shard_id is None:
        return 0
    if isinstance(shard_id, str):
        return {"q": 0, "k": 1, "v": 2}[shard_id]
    return int(shard_id)


def _checked_loader(
    inner: Any, members: list[str], suffix: str, dtype: torch.dtype, cols: int | None
) -> Any:
    """Wrap a vLLM weight loader: check dtype (vLLM's copy_ would silently cast) and the K-side
    width (block / K mismatch) of each checkpoint tensor before it is sharded, naming it."""

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shard = args[0] if args else kwargs.get("loaded_shard_id")
        idx = _shard_index(shard) if not isinstance(shard, tuple) else 0
        name = f"{members[min(idx, len(members) - 1)]}.{suffix}"
        if loaded_weight.dtype != dtype:
            raise CheckpointError(
                f"tensor {name}: dtype {dtype_name(loaded_weight.dtype)}, expected {dtype_name(dtype)}"
            )
        if cols is not None and (loaded_weight.dim() != 2 or loaded_weight.shape[1] != cols):
            raise CheckpointError(
                f"tensor {name}: shape {list(loaded_weight.shape)}, expected [*, {cols}] "
                "(wrong input size or weight block for this model)"
            )
        if cols is None and loaded_weight.numel() != 1:
            raise CheckpointError(f"tensor {name}: shape {list(loaded_weight.shape)}, expected [1]")
        return inner(param, loaded_weight, *args, **kwargs)

    return load


def create_packed_parameters(
    layer: torch.nn.Module,
    *,
    prefix: str,
    input_size_per_partition: int,
    output_partition_sizes: Sequence[int],
    input_size: int,
    options: SharQOptions,
    weight_loader: Any,
) -> None:
    """Register the payload parameters of a pre-quantized linear layer on ``layer`` (call from
    the linear method's ``create_weights``). Shapes are per TP partition; vLLM's own weight
    loaders shard the checkpoint tensors (rows for column parallel, packed K for row parallel):

    * ``weight_packed``        uint8 [N_part, K_part/2]         ModelWeightParameter
    * ``weight_scale``         e4m3  [N_part, K_part/block]     GroupQuantScaleParameter
    * ``weight_tensor_scale``  fp32  [#logical shards]          PerTensorScaleParameter

    The linear method must be v2-loader capable (vLLM: ``register_weight_loader_v2_supported_
    method`` or WEIGHT_LOADER_V2_SUPPORTED), and ``uses_meta_device`` False."""
    n = int(sum(output_partition_sizes))
    k = int(input_size_per_partition)
    specs = expected_tensors(prefix, n, k, options)
    if input_size % options.weight_block:
        raise CheckpointError(f"{prefix}: input dim {input_size} is not a multiple of {options.weight_block}")
    members = _members(prefix, len(output_partition_sizes))
    block = options.weight_block
    packed = ModelWeightParameter(
        data=torch.zeros(specs[PACKED].shape, dtype=torch.uint8),
        input_dim=1,
        output_dim=0,
        weight_loader=_checked_loader(weight_loader, members, PACKED, torch.uint8, input_size // 2),
    )
    scale = GroupQuantScaleParameter(
        data=torch.full(specs[SCALE].shape, _NAN_E4M3[0], dtype=torch.uint8).view(SCALE_DTYPE),
        input_dim=1,
        output_dim=0,
        weight_loader=_checked_loader(weight_loader, members, SCALE, SCALE_DTYPE, input_size // block),
    )
    tensor_scale = PerTensorScaleParameter(
        data=torch.full((len(output_partition_sizes),), float("nan"), dtype=torch.float32),
        weight_loader=_checked_loader(weight_loader, members, TENSOR_SCALE, torch.float32, None),
    )
    layer.register_parameter(PACKED, packed)
    layer.register_parameter(SCALE, scale)
    layer.register_parameter(TENSOR_SCALE, tensor_scale)
    setattr(layer, "sharq_output_partition_sizes", list(output_partition_sizes))  # noqa: B010


def check_shards_loaded(
    prefix: str,
    members: Sequence[str],
    sizes: Sequence[int],
    scale: torch.Tensor,
    tensor_scale: torch.Tensor,
    suffixes: tuple[str, str],
) -> None:
    """Every logical shard's block scales (rows still holding the E4M3 NaN they were created
    with) and tensor scale (NaN) were loaded; raises CheckpointError naming the missing tensor."""
    raw = scale.view(torch.uint8)
    bad_rows = ((raw == _NAN_E4M3[0]) | (raw == _NAN_E4M3[1])).any(dim=1)
    start = 0
    for member, size in zip(members, sizes, strict=True):
        if bool(bad_rows[start : start + size].any()):
            raise CheckpointError(
                f"tensor {member}.{suffixes[0]} was not loaded (or holds NaN scales) for {prefix}"
            )
        start += size
    for i, member in enumerate(members):
        if not bool(torch.isfinite(tensor_scale[i])):
            raise CheckpointError(f"tensor {member}.{suffixes[1]} was not loaded for {prefix}")


def finalize_packed(layer: torch.nn.Module, *, prefix: str, options: SharQOptions) -> QuantizedBlocks:
    """The loaded payload of a pre-quantized layer (call from ``process_weights_after_loading``),
    after checking that every logical shard's tensors were loaded and that fused shards share
    one tensor scale. Removes the three parameters from ``layer``; the caller keeps the payload
    (``SharQLinearMethod._install``) exactly as the online path does."""
    packed: torch.Tensor = getattr(layer, PACKED).data
    scale: torch.Tensor = getattr(layer, SCALE).data
    ts: torch.Tensor = getattr(layer, TENSOR_SCALE).data
    sizes = list(getattr(layer, "sharq_output_partition_sizes", [packed.shape[0]]))
    members = _members(prefix, len(sizes))
    check_shards_loaded(prefix, members, sizes, scale, ts, (SCALE, TENSOR_SCALE))
    shared = shared_tensor_scale(prefix, ts, [f"{m}.{TENSOR_SCALE}" for m in members])
    validate_loaded(
        prefix,
        {PACKED: packed, SCALE: scale, TENSOR_SCALE: shared},
        packed.shape[0],
        packed.shape[1] * 2,
        options,
    )
    payload = payload_from_tensors(packed, scale, shared, options.weight_block)
    for name in PAYLOAD_SUFFIXES:
        delattr(layer, name)
    return payload
