"""The on-disk format of pre-quantized SharQ checkpoints: tensor names, shapes and dtypes, the
fused-layer groups and which layers stay 16-bit, and ``quantization_config``.

A SharQ checkpoint is a Hugging Face folder (config.json + safetensors, sharded or not) in which
every quantized linear layer ``<prefix>`` (e.g. ``model.layers.0.self_attn.q_proj``) stores, in
place of its 16-bit ``<prefix>.weight``, the shared FP4 weight payload
(:func:`sharq_vllm.reference.quantize_weight`):

==================================  =============  ============  ==================================
tensor                              dtype          shape         meaning
==================================  =============  ============  ==================================
``<prefix>.weight_packed``          uint8          [N, K/2]      E2M1 codes, element 2i low nibble
``<prefix>.weight_scale``           float8_e4m3fn  [N, K/block]  E4M3 block scales (block 32 or 16)
``<prefix>.weight_tensor_scale``    float32        [1]           FP32 tensor scale t = amax / 2688
==================================  =============  ============  ==================================

(dequantized weight = e2m1(code) * fp32(scale) * t, docs/NUMERICS.md). Everything else (biases,
embeddings, norms, lm_head, skipped layers) stays 16-bit under its usual name. config.json
carries ``quantization_config = {"quant_method": "sharq", <SharQOptions>, "version": 1}``.

Why ``weight_tensor_scale`` and not compressed-tensors' ``weight_global_scale``: in
compressed-tensors NVFP4 the global scale is the *reciprocal* (2688 / amax). Storing our
dequantization multiplier under that name would be silently misread by any tool that knows that
convention; a distinct name fails loudly instead.

Fused layers: vLLM loads q/k/v into one ``qkv_proj`` and gate/up into one ``gate_up_proj`` and the
online path quantizes the fused weight with ONE tensor scale (amax over all fused rows). The
offline quantizer therefore gives every member of a group the group's amax, and each member's
``weight_tensor_scale`` holds the same value; codes and block scales are per row-block, so the
row-concatenation of the members' payloads is bit-identical to the fused online payload
(tests/test_checkpoint.py). ``validate.shared_tensor_scale`` checks the equality at load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..formats import WEIGHT_FORMATS, QuantizedBlocks
from ..options import SharQOptionError, SharQOptions

CHECKPOINT_VERSION = 1
PACKED = "weight_packed"
SCALE = "weight_scale"
TENSOR_SCALE = "weight_tensor_scale"
PAYLOAD_SUFFIXES = (PACKED, SCALE, TENSOR_SCALE)

SCALE_DTYPE = torch.float8_e4m3fn


#: vLLM's packed_modules_mapping for Llama-like decoders: fused module -> its checkpoint members
FUSED_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
_MEMBER_TO_FUSED = {m: f for f, ms in FUSED_GROUPS.items() for m in ms}

# decoder linears of dense Llama-like models (Llama, Mistral, Qwen2, Gemma, Phi-3 pre-fused):
# exactly the LinearBase layers vLLM hands to SharQLinearMethod. Embeddings and lm_head are not
# LinearBase and stay 16-bit.
_LINEAR_RE = re.compile(
    r"(?:^|\.)layers\.\d+\.(?:self_attn|mlp)\."
    r"(?P<proj>q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)$"
)
# towers of multimodal models keep their 16-bit weights (vLLM gives them their own quant config)
_NON_TEXT_RE = re.compile(r"(?:^|\.)(?:vision_tower|vision_model|visual|audio_tower|multi_modal_projector)\.")


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint; the message names the file or tensor."""


# ---------------------------------------------------------------------------------------------
# naming
# ---------------------------------------------------------------------------------------------
def is_quantizable_linear(module: str) -> bool:
    """Whether ``module`` (a tensor name without ``.weight``) is a decoder linear layer that
    SharQ quantizes (before skip_layers are applied)."""
    return bool(_LINEAR_RE.search(module)) and not _NON_TEXT_RE.search(module)


def fused_group(module: str) -> tuple[str, tuple[str, ...]]:
    """The fused vLLM module a checkpoint module belongs to and all its members' names.

    ``model.layers.0.self_attn.k_proj`` -> (``...self_attn.qkv_proj``, (``...q_proj``,
    ``...k_proj``, ``...v_proj``)); an unfused module is its own group of one.
    """
    parent, _, leaf = module.rpartition(".")
    fused = _MEMBER_TO_FUSED.get(leaf)
    if fused is None:
        return module, (module,)
    pre = f"{parent}." if parent else ""
    return pre + fused, tuple(pre + m for m in FUSED_GROUPS[fused])


def fused_members(layer: str) -> tuple[str, ...]:
    """The checkpoint modules fused into the vLLM layer ``layer`` (``...qkv_proj`` -> its q, k, v
    modules), in shard order; an unfused layer is its own only member."""
    parent, _, leaf = layer.rpartition(".")
    pre = f"{parent}." if parent else ""
    return tuple(pre + m for m in FUSED_GROUPS[leaf]) if leaf in FUSED_GROUPS else (layer,)


def is_module_skipped(options: SharQOptions, module: str) -> bool:
    """Whether the checkpoint module ``module`` stays 16-bit: the rule of the vLLM layer it
    belongs to (:meth:`SharQOptions.is_layer_skipped`, which the plugin's
    ``SharQConfig.is_layer_skipped`` calls too), with the fused group as its members."""
    fused, members = fused_group(module)
    try:
        return options.is_layer_skipped(fused, members if len(members) > 1 else ())
    except SharQOptionError as e:
        raise CheckpointError(str(e).removeprefix("sharq: ")) from None


def payload_names(prefix: str) -> dict[str, str]:
    return {s: f"{prefix}.{s}" for s in PAYLOAD_SUFFIXES}

# ---------------------------------------------------------------------------------------------
# quantization_config
# ---------------------------------------------------------------------------------------------
def make_quantization_config(options: SharQOptions) -> dict[str, Any]:
    """The ``quantization_config`` written into config.json (SharQOptions' keys + version)."""
    return {**options.to_dict(), "version": CHECKPOINT_VERSION}


def is_prequantized_config(quantization_config: Mapping[str, Any] | None) -> bool:
    """A ``quantization_config`` written by ``sharq-vllm quantize`` (it carries ``version``):
    the checkpoint holds packed payloads. Without ``version`` (e.g. options given with
    --hf-overrides for a 16-bit checkpoint) the layers are quantized online. (Other tools'
    configs carry a ``version`` too: compressed-tensors'; their quant_method is not sharq.)"""
    return (
        isinstance(quantization_config, Mapping)
        and "version" in quantization_config
        and quantization_config.get("quant_method", "sharq") == "sharq"
    )


def read_quantization_config(config: Mapping[str, Any], *, where: str = "config.json") -> SharQOptions | None:
    """SharQOptions from a model config dict (None when it has no quantization_config).

    Raises CheckpointError for another quant_method, an unknown format/pattern/option, or a
    checkpoint version newer than this sharq-vllm understands."""
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise CheckpointError(f"{where}: quantization_config must be an object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if method != "sharq":
        raise CheckpointError(
            f"{where}: quantization_config.quant_method is {method!r}, not 'sharq' "
            "(this is not a SharQ checkpoint)"
        )
    version = qc.get("version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{where}: quantization_config.version must be a positive integer, got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{where}: SharQ checkpoint version {version} is newer than this sharq-vllm "
            f"understands (version {CHECKPOINT_VERSION}); upgrade sharq-vllm"
        )
    try:
        return SharQOptions.from_dict(qc)
    except SharQOptionError as e:
        raise CheckpointError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# per-layer expectations (what the vLLM plugin calls when it loads a pre-quantized layer)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _weight_block(options: SharQOptions | int) -> int:
    return options if isinstance(options, int) else options.weight_block


def expected_tensors(
    prefix: str, out_features: int, in_features: int, options: SharQOptions | int
) -> dict[str, TensorSpec]:
    """The payload tensors of one quantized linear ``prefix`` with weight [out, in], keyed by
    suffix (``weight_packed``, ``weight_scale``, ``weight_tensor_scale``).

    ``options`` is the SharQOptions (or just the weight block). Works per TP shard too: pass
    the shard's out/in features (the tensor scale stays [1] per logical shard)."""
    block = _weight_block(options)
    if block not in WEIGHT_FORMATS:
        raise CheckpointError(f"{prefix}: weight block {block} is not one of {sorted(WEIGHT_FORMATS)}")
    if in_features % block:
        raise CheckpointError(
            f"{prefix}: input dim {in_features} is not a multiple of the weight block {block}"
        )
    if not isinstance(options, int) and in_features % options.required_k_multiple:
        raise CheckpointError(
            f"{prefix}: input dim {in_features} is not a multiple of "
            f"{options.required_k_multiple}, which SharQ with {options.summary()} needs"
        )
    names = payload_names(prefix)
    return {
        PACKED: TensorSpec(names[PACKED], (out_features, in_features // 2), torch.uint8),
        SCALE: TensorSpec(names[SCALE], (out_features, in_features // block), SCALE_DTYPE),
        TENSOR_SCALE: TensorSpec(names[TENSOR_SCALE], (1,), torch.float32),
    }


def check_tensor(spec: TensorSpec, shape: Sequence[int] | torch.Size, dtype: torch.dtype) -> None:
    """Raise CheckpointError naming ``spec.name`` when shape or dtype differ."""
    if dtype != spec.dtype:
        raise CheckpointError(
            f"tensor {spec.name}: dtype {dtype_name(dtype)}, expected {dtype_name(spec.dtype)}"
        )
    if tuple(shape) != spec.shape:
        raise CheckpointError(f"tensor {spec.name}: shape {list(shape)}, expected {list(spec.shape)}")


def payload_to_tensors(prefix: str, payload: QuantizedBlocks) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (full names) of one layer's weight payload."""
    if payload.tensor_scale is None or payload.fmt.scale_kind != "e4m3":
        raise CheckpointError(f"{prefix}: only E4M3-scaled SharQ weight payloads can be stored")
    names = payload_names(prefix)
    return {
        names[PACKED]: payload.codes.contiguous(),
        names[SCALE]: payload.block_scales.contiguous(),
        names[TENSOR_SCALE]: payload.tensor_scale.reshape(1).float().contiguous(),
    }


def payload_from_tensors(
    packed: torch.Tensor, scale: torch.Tensor, tensor_scale: torch.Tensor, block: int | None = None
) -> QuantizedBlocks:
    """The :class:`QuantizedBlocks` a loaded layer hands to the kernels (block inferred from the
    shapes when not given)."""
    k = packed.shape[-1] * 2
    if block is None:
        if scale.shape[-1] == 0 or k % scale.shape[-1]:
            raise CheckpointError(f"cannot infer the weight block from K={k} and {scale.shape[-1]} scales")
        block = k // scale.shape[-1]
    if block not in WEIGHT_FORMATS:
        raise CheckpointError(f"weight block {block} is not one of {sorted(WEIGHT_FORMATS)}")
    return QuantizedBlocks(packed, scale, tensor_scale.reshape(1).float(), WEIGHT_FORMATS[block], block)


# ---------------------------------------------------------------------------------------------
# reading safetensors folders (headers only unless a tensor is asked for)
# ---------------------------------------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
