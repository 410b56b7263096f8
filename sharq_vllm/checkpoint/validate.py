"""Validating SharQ checkpoints: a whole folder from its safetensors headers (plus the tiny
tensor scales) before anything is loaded (``sharq-vllm inspect``, the plugin's preflight), and
one loaded layer's tensors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..options import SharQOptions
from .format import (
    PACKED,
    PAYLOAD_SUFFIXES,
    TENSOR_SCALE,
    CheckpointError,
    check_tensor,
    expected_tensors,
    fused_group,
    is_module_skipped,
    is_prequantized_config,
    is_quantizable_linear,
    payload_names,
    read_quantization_config,
)
from .io import INDEX_NAME, SafetensorsCheckpoint, natural_key, read_config


def validate_loaded(
    prefix: str,
    tensors: Mapping[str, torch.Tensor | None],
    out_features: int,
    in_features: int,
    options: SharQOptions | int,
) -> None:
    """Check one layer's loaded payload tensors (keyed by suffix or full name; a missing key or
    None means the checkpoint did not provide it). Raises CheckpointError naming the tensor."""
    specs = expected_tensors(prefix, out_features, in_features, options)
    for suffix, spec in specs.items():
        t = tensors.get(suffix, tensors.get(spec.name))
        if t is None:
            raise CheckpointError(f"tensor {spec.name} is missing from the checkpoint")
        check_tensor(spec, t.shape, t.dtype)
        if suffix == TENSOR_SCALE and t.device.type != "meta":
            _check_tensor_scale_value(spec.name, t)


def _check_tensor_scale_value(name: str, t: torch.Tensor) -> None:
    # host sync; called at load time only
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise CheckpointError(f"tensor {name}: tensor scale {t.tolist()} is not finite and >= 0")


def shared_tensor_scale(
    prefix: str, scales: torch.Tensor | Sequence[torch.Tensor], shard_names: Sequence[str] | None = None
) -> torch.Tensor:
    """The single FP32 tensor scale [1] of a fused layer from its per-shard checkpoint values
    (q/k/v or gate/up each carry one). They must be bit-equal: a checkpoint whose members were
    quantized with different amaxes is not the fused online payload, so it is refused."""
    vals = torch.stack([s.reshape(()) for s in scales]) if not isinstance(scales, torch.Tensor) else scales.reshape(-1)
    vals = vals.float()
    if vals.numel() == 0:
        raise CheckpointError(f"{prefix}: no {TENSOR_SCALE} values")
    if not bool((vals == vals[0]).all()):
        names = list(shard_names) if shard_names else [str(i) for i in range(vals.numel())]
        listing = ", ".join(f"{n}={v:.9g}" for n, v in zip(names, vals.tolist(), strict=False))
        raise CheckpointError(
            f"{prefix}.{TENSOR_SCALE}: the fused shards carry different tensor scales ({listing}); "
            "SharQ checkpoints quantize q/k/v and gate/up with one shared amax "
            "(re-create it with `sharq-vllm quantize`)"
        )
    return vals[:1].clone()


# ---------------------------------------------------------------------------------------------
# whole-checkpoint validation (headers + the tiny tensor scales); used by `inspect` and at load
# ---------------------------------------------------------------------------------------------
@dataclass
class LayerInfo:
    prefix: str
    out_features: int
    in_features: int
    block: int
    payload_bytes: int
    tensor_scale: float

    @property
    def bf16_bytes(self) -> int:
        return self.out_features * self.in_features * 2


@dataclass
class CheckpointInfo:
    path: Path
    options: SharQOptions | None
    config: dict[str, Any]
    layers: list[LayerInfo] = field(default_factory=list)
    other_bytes: int = 0  # 16-bit (and other) tensors
    other_tensors: int = 0
    file_bytes: int = 0
    files: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized_bytes(self) -> int:
        return sum(layer.payload_bytes for layer in self.layers)

    @property
    def quantized_bf16_bytes(self) -> int:
        return sum(layer.bf16_bytes for layer in self.layers)

    @property
    def tensor_bytes(self) -> int:
        return self.quantized_bytes + self.other_bytes


def _config_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """[out, in] of each projection for a Llama-like text config (empty when keys are missing)."""
    cfg: Mapping[str, Any] = config.get("text_config") or config
    try:
        hidden = int(cfg["hidden_size"])
        inter = int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return {}
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv * head_dim, hidden),
        "v_proj": (kv * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def validate_checkpoint(path: str | Path, *, require_sharq: bool = True) -> CheckpointInfo:
    """Validate a SharQ checkpoint folder from its safetensors headers (plus the [1]-element tensor
    scales) without loading the weights. Raises CheckpointError naming the file or tensor:
    unknown format/options, missing payload tensor, wrong shape/dtype, a layer left 16-bit that
    the config does not skip, fused members with different tensor scales, shapes that disagree
    with config.json."""
    root = Path(path)
    config = read_config(root)
    options = read_quantization_config(config, where=str(root / "config.json"))
    ckpt = SafetensorsCheckpoint(root)
    info = CheckpointInfo(root, options, config, file_bytes=ckpt.file_bytes(), files=len(ckpt.files))
    index = root / INDEX_NAME
    if index.is_file():
        meta = json.loads(index.read_text()).get("metadata") or {}
        info.metadata = dict(meta.get("sharq") or {}) if isinstance(meta, dict) else {}

    names = set(ckpt.names())
    prefixes: dict[str, set[str]] = {}
    for n in names:
        prefix, _, suffix = n.rpartition(".")
        if suffix in PAYLOAD_SUFFIXES:
            prefixes.setdefault(prefix, set()).add(suffix)
    if prefixes and options is None:
        example = sorted(prefixes)[0]
        raise CheckpointError(
            f"tensor {example}.{PACKED}: packed SharQ tensors but config.json has no SharQ "
            "quantization_config"
        )
    if options is None and require_sharq:
        raise CheckpointError(
            f"{root / 'config.json'}: no quantization_config (a 16-bit checkpoint: serve it with "
            "--quantization sharq, or create a SharQ checkpoint with `sharq-vllm quantize`)"
        )
    shapes_from_config = _config_shapes(config)
    accounted: set[str] = set()
    for prefix in sorted(prefixes, key=natural_key):
        if options is None:  # unreachable (checked above); keeps mypy happy
            break
        names_ = payload_names(prefix)
        for suffix in PAYLOAD_SUFFIXES:
            if suffix not in prefixes[prefix]:
                raise CheckpointError(f"tensor {names_[suffix]} is missing from the checkpoint")
        if not is_quantizable_linear(prefix):
            raise CheckpointError(f"tensor {names_[PACKED]}: {prefix} is not a linear layer SharQ quantizes")
        if is_module_skipped(options, prefix):
            raise CheckpointError(
                f"tensor {names_[PACKED]}: {prefix} is quantized but quantization_config.skip_layers "
                "skips it"
            )
        if f"{prefix}.weight" in names:
            raise CheckpointError(f"tensor {prefix}.weight: stored in 16 bits next to its SharQ payload")
        pshape = ckpt.shapes[names_[PACKED]]
        if len(pshape) != 2:
            raise CheckpointError(f"tensor {names_[PACKED]}: shape {list(pshape)}, expected [N, K/2]")
        out_f, in_f = pshape[0], pshape[1] * 2
        leaf = prefix.rpartition(".")[2]
        if leaf in shapes_from_config and shapes_from_config[leaf] != (out_f, in_f):
            want = shapes_from_config[leaf]
            raise CheckpointError(
                f"tensor {names_[PACKED]}: shape {list(pshape)} means a [{out_f}, {in_f}] weight, but "
                f"config.json implies [{want[0]}, {want[1]}] (packed [{want[0]}, {want[1] // 2}])"
            )
        specs = expected_tensors(prefix, out_f, in_f, options)
        for spec in specs.values():
            check_tensor(spec, ckpt.shapes[spec.name], ckpt.dtypes[spec.name])
        ts = ckpt.get(names_[TENSOR_SCALE])
        _check_tensor_scale_value(names_[TENSOR_SCALE], ts)
        info.layers.append(
            LayerInfo(prefix, out_f, in_f, options.weight_block, sum(s.nbytes for s in specs.values()), float(ts))
        )
        accounted.update(names_.values())

    if options is not None:
        # every quantizable linear must be quantized unless skipped
        for n in sorted(names - accounted):
            module = n.removesuffix(".weight")
            if n.endswith(".weight") and is_quantizable_linear(module) and not is_module_skipped(options, module):
                raise CheckpointError(
                    f"tensor {n}: {module} is stored in 16 bits but quantization_config does not "
                    f"skip it (expected {module}.{PACKED})"
                )
        # fused members share one tensor scale; skip state must be uniform within a group
        by_prefix = {layer.prefix: layer for layer in info.layers}
        seen: set[str] = set()
        for layer in info.layers:
            fused, members = fused_group(layer.prefix)
            if fused in seen or len(members) == 1:
                continue
            seen.add(fused)
            present = [m for m in members if m in by_prefix]
            for m in members:
                if m not in by_prefix and f"{m}.weight" not in names:
                    raise CheckpointError(
                        f"tensor {m}.{PACKED} is missing from the checkpoint ({fused} needs all of "
                        f"{[x.rpartition('.')[2] for x in members]})"
                    )
            absent = [m for m in members if m not in by_prefix]
            if absent:
                raise CheckpointError(
                    f"tensor {absent[0]}.weight: {fused} is fused in vLLM, but {absent[0]} is 16-bit "
                    f"while {present[0]} is quantized (skip all of {[m.rpartition('.')[2] for m in members]} or none)"
                )
            shared_tensor_scale(
                fused,
                [torch.tensor(by_prefix[m].tensor_scale, dtype=torch.float32) for m in present],
                [f"{m}.{TENSOR_SCALE}" for m in present],
            )
    for n in names - accounted:
        info.other_bytes += ckpt.nbytes(n)
        info.other_tensors += 1
    return info


def preflight(model: str | Path) -> CheckpointInfo | None:
    """Validate a local pre-quantized checkpoint before vLLM loads it (headers only; fails with
    the tensor's name). Returns None for a non-local model or a 16-bit checkpoint.
    Call from ``SharQConfig.maybe_update_config(model_name, ...)``."""
    root = Path(model)
    if not (root / "config.json").is_file():
        return None
    if not is_prequantized_config(read_config(root).get("quantization_config")):
        return None
    return validate_checkpoint(root)
