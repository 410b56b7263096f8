"""Pre-quantized SharQ checkpoints (docs/CHECKPOINTS.md). No vLLM (or transformers) import.

* :mod:`.format`: tensor names, shapes and dtypes, fused groups and the skip rule,
  ``quantization_config`` (read, write, version);
* :mod:`.io`: reading folders (config.json, safetensors files and headers; never pickle);
* :mod:`.validate`: whole-folder validation from the headers, one loaded layer's tensors;
* :mod:`.writer`: ``sharq-vllm quantize`` (a 16-bit checkpoint -> a SharQ checkpoint).

Loading a checkpoint into vLLM's layers is the plugin's (``sharq_vllm.vllm_plugin.prequantized``).
"""

from .format import (
    CHECKPOINT_VERSION,
    FUSED_GROUPS,
    PACKED,
    PAYLOAD_SUFFIXES,
    SCALE,
    SCALE_DTYPE,
    TENSOR_SCALE,
    CheckpointError,
    TensorSpec,
    check_tensor,
    expected_tensors,
    fused_group,
    fused_members,
    is_module_skipped,
    is_prequantized_config,
    is_quantizable_linear,
    make_quantization_config,
    payload_from_tensors,
    payload_names,
    payload_to_tensors,
    read_quantization_config,
)
from .io import (
    INDEX_NAME,
    PICKLE_SUFFIXES,
    SafetensorsCheckpoint,
    find_weight_files,
    natural_key,
    natural_sorted,
    read_config,
)
from .validate import (
    CheckpointInfo,
    LayerInfo,
    preflight,
    shared_tensor_scale,
    validate_checkpoint,
    validate_loaded,
)
from .writer import DTYPES, QuantizeReport, numerics_digest, quantize_checkpoint, resolve_dtype

__all__ = [
    "CHECKPOINT_VERSION",
    "DTYPES",
    "FUSED_GROUPS",
    "INDEX_NAME",
    "PACKED",
    "PAYLOAD_SUFFIXES",
    "PICKLE_SUFFIXES",
    "SCALE",
    "SCALE_DTYPE",
    "TENSOR_SCALE",
    "CheckpointError",
    "CheckpointInfo",
    "LayerInfo",
    "QuantizeReport",
    "SafetensorsCheckpoint",
    "TensorSpec",
    "check_tensor",
    "expected_tensors",
    "find_weight_files",
    "fused_group",
    "fused_members",
    "is_module_skipped",
    "is_prequantized_config",
    "is_quantizable_linear",
    "make_quantization_config",
    "natural_key",
    "natural_sorted",
    "numerics_digest",
    "payload_from_tensors",
    "payload_names",
    "payload_to_tensors",
    "preflight",
    "quantize_checkpoint",
    "read_config",
    "read_quantization_config",
    "resolve_dtype",
    "shared_tensor_scale",
    "validate_checkpoint",
    "validate_loaded",
]
