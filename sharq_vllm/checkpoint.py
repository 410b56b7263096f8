"""The on-disk format of pre-quantized SharQ checkpoints, and its validator.

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
(tests/test_checkpoint.py). :func:`shared_tensor_scale` checks the equality at load.

Only safetensors are ever read (no pickle). This module imports neither vLLM nor transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .formats import WEIGHT_FORMATS, QuantizedBlocks
from .options import SharQOptionError, SharQOptions

__all__ = [
    "CHECKPOINT_VERSION",
    "FUSED_GROUPS",
    "PACKED",
    "PAYLOAD_SUFFIXES",
    "SCALE",
    "TENSOR_SCALE",
    "CheckpointError",
    "CheckpointInfo",
    "LayerInfo",
    "SafetensorsCheckpoint",
    "TensorSpec",
    "check_tensor",
    "create_packed_parameters",
    "expected_tensors",
    "finalize_packed",
    "find_weight_files",
    "fused_group",
    "is_module_skipped",
    "is_prequantized_config",
    "is_quantizable_linear",
    "make_quantization_config",
    "natural_key",
    "natural_sorted",
    "payload_from_tensors",
    "payload_to_tensors",
    "preflight",
    "read_config",
    "read_quantization_config",
    "shared_tensor_scale",
    "validate_checkpoint",
    "validate_loaded",
]

CHECKPOINT_VERSION = 1
PACKED = "weight_packed"
SCALE = "weight_scale"
TENSOR_SCALE = "weight_tensor_scale"
PAYLOAD_SUFFIXES = (PACKED, SCALE, TENSOR_SCALE)

SCALE_DTYPE = torch.float8_e4m3fn
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"

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

_ST_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


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


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "config.json"
    if not p.is_file():
        raise CheckpointError(f"{Path(path)}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: cannot parse: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{p}: expected a JSON object")
    return cfg


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
            f"tensor {spec.name}: dtype {_dtype_name(dtype)}, expected {_dtype_name(spec.dtype)}"
        )
    if tuple(shape) != spec.shape:
        raise CheckpointError(f"tensor {spec.name}: shape {list(shape)}, expected {list(spec.shape)}")


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
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def find_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model folder (from its index when there is one).

    Refuses pickle-only checkpoints (pytorch_model.bin, *.pt, ...) rather than unpickling."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: no such directory")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    index = root / INDEX_NAME
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
            files: list[str] = sorted({str(v) for v in wm.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) that do not exist: {missing}")
        return [root / f for f in files]
    found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if found:
        return found
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{root}: only pickle checkpoints found ({', '.join(pickles[:4])}); sharq-vllm reads "
            "safetensors only (pickle files can run arbitrary code). Convert them first, e.g. "
            "with transformers: AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, "
            "safe_serialization=True) in a trusted environment"
        )
    raise CheckpointError(f"{root}: no *.safetensors weights (not a checkpoint folder)")


class SafetensorsCheckpoint:
    """Name -> (file, shape, dtype) over every shard, from the headers; tensors on demand."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.root = Path(path)
        self.files = find_weight_files(self.root)
        self._handles: dict[Path, Any] = {}
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for f in self.files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{f}: corrupt or unreadable safetensors file ({e})") from None
            self._handles[f] = h
            for name in h.keys():
                if name in self.where:
                    raise CheckpointError(f"tensor {name} is stored twice ({self.where[name].name}, {f.name})")
                sl = h.get_slice(name)
                st_dtype = sl.get_dtype()
                if st_dtype not in _ST_DTYPES:
                    raise CheckpointError(f"tensor {name} in {f.name}: unsupported dtype {st_dtype}")
                self.where[name] = f
                self.shapes[name] = tuple(int(s) for s in sl.get_shape())
                self.dtypes[name] = _ST_DTYPES[st_dtype]
        index = self.root / INDEX_NAME
        if index.is_file():
            wm = json.loads(index.read_text())["weight_map"]
            for name, fname in wm.items():
                if name not in self.where:
                    raise CheckpointError(f"tensor {name}: listed in {INDEX_NAME} ({fname}) but not stored there")
                if self.where[name].name != Path(fname).name:
                    raise CheckpointError(
                        f"tensor {name}: {INDEX_NAME} says {fname}, found in {self.where[name].name}"
                    )

    def names(self) -> list[str]:
        return list(self.where)

    def nbytes(self, name: str) -> int:
        return TensorSpec(name, self.shapes[name], self.dtypes[name]).nbytes

    def get(self, name: str) -> torch.Tensor:
        try:
            f = self.where[name]
        except KeyError:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint") from None
        try:
            return self._handles[f].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"tensor {name} in {f.name}: cannot read ({e})") from None

    def file_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


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


def natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def natural_sorted(items: Iterable[str]) -> list[str]:
    return sorted(items, key=natural_key)


# ---------------------------------------------------------------------------------------------
# vLLM loading of pre-quantized layers (what SharQConfig / its linear method call; vLLM is
# imported lazily, only inside these functions)
# ---------------------------------------------------------------------------------------------
_NAN_E4M3 = (0x7F, 0xFF)  # E4M3 NaN codes: the quantizer never writes them; marks unloaded rows


def is_prequantized_config(quantization_config: Mapping[str, Any] | None) -> bool:
    """A ``quantization_config`` written by ``sharq-vllm quantize`` (it carries ``version``):
    the checkpoint holds packed payloads. Without ``version`` (e.g. options given with
    --hf-overrides for a 16-bit checkpoint) the layers are quantized online."""
    return isinstance(quantization_config, Mapping) and "version" in quantization_config


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


def _members(prefix: str, n_shards: int) -> list[str]:
    """Checkpoint module names of the logical shards of vLLM layer ``prefix``."""
    parent, _, leaf = prefix.rpartition(".")
    members = FUSED_GROUPS.get(leaf)
    pre = f"{parent}." if parent else ""
    if members is not None and len(members) == n_shards:
        return [pre + m for m in members]
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
                f"tensor {name}: dtype {_dtype_name(loaded_weight.dtype)}, expected {_dtype_name(dtype)}"
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
    from vllm.model_executor.parameter import (
        GroupQuantScaleParameter,
        ModelWeightParameter,
        PerTensorScaleParameter,
    )

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


def finalize_packed(layer: torch.nn.Module, *, prefix: str, options: SharQOptions) -> QuantizedBlocks:
    """The loaded payload of a pre-quantized layer (call from ``process_weights_after_loading``),
    after checking that every logical shard's tensors were loaded and that fused shards share
    one tensor scale. Removes the three parameters from ``layer``; the caller keeps the payload
    (e.g. ``backend.pack(payload)``) exactly as the online path does."""
    packed: torch.Tensor = getattr(layer, PACKED).data
    scale: torch.Tensor = getattr(layer, SCALE).data
    ts: torch.Tensor = getattr(layer, TENSOR_SCALE).data
    sizes = list(getattr(layer, "sharq_output_partition_sizes", [packed.shape[0]]))
    members = _members(prefix, len(sizes))
    raw = scale.view(torch.uint8)
    bad_rows = ((raw == _NAN_E4M3[0]) | (raw == _NAN_E4M3[1])).any(dim=1)
    start = 0
    for member, size in zip(members, sizes, strict=True):
        if bool(bad_rows[start : start + size].any()):
            raise CheckpointError(
                f"tensor {member}.{SCALE} was not loaded (or holds NaN scales) for {prefix}"
            )
        start += size
    for i, member in enumerate(members):
        if not bool(torch.isfinite(ts[i])):
            raise CheckpointError(f"tensor {member}.{TENSOR_SCALE} was not loaded for {prefix}")
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
