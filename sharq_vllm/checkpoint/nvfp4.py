"""NVFP4 checkpoints written by other tools, read as SharQ weight payloads. No vLLM import.

NVIDIA ModelOpt (``quant_method: modelopt``, ``quant_algo: NVFP4`` / ``W4A16_NVFP4``) and
llm-compressor (compressed-tensors ``nvfp4-pack-quantized``, schemes NVFP4 / NVFP4A16) store
each quantized linear ``<prefix>`` as

=========================  ===============================  =============  =================
ModelOpt                   compressed-tensors               dtype          shape
=========================  ===============================  =============  =================
``weight``                 ``weight_packed``                uint8          [N, K/2]
``weight_scale``           ``weight_scale``                 float8_e4m3fn  [N, K/16]
``weight_scale_2``         ``weight_global_scale``          float32        [] or [1]
``input_scale`` (W4A4)     ``input_global_scale`` (W4A4)    float32        [] or [1]
=========================  ===============================  =============  =================

The codes and block scales are exactly SharQ's ``weight_block: 16`` payload (E2M1, element 2i
in the low nibble; one E4M3 scale per 16 along K). The FP32 tensor scale t (value = e2m1 *
fp32(scale) * t) is ModelOpt's ``weight_scale_2`` as stored (amax / 2688, a multiplier) and,
for compressed-tensors, ``1.0 / weight_global_scale`` in FP32 (the global scale is the
divisor 2688 / amax), computed exactly as vLLM 0.32's ``CompressedTensorsW4A4Fp4`` does, so the
dequantized weights are bit-identical to vLLM's. The ``input_*`` scales are static activation
scales; SharQ's activation scales are dynamic (per token), so they are read and dropped.

Each member of a fused vLLM layer (q/k/v, gate/up) carries its own tensor scale. Both tools
give the members one shared scale by default; when they differ the plugin keeps one payload per
member (:func:`split_by_tensor_scale`), never one scale for all (what vLLM 0.32 does: it takes
the max, which rescales the other members' weights).

Which checkpoints are served and why others are refused: :func:`parse_nvfp4_config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..formats import WEIGHT_FORMATS, QuantizedBlocks
from ..options import SharQOptions
from .format import (
    SCALE_DTYPE,
    CheckpointError,
    dtype_name,
    fused_group,
    is_module_skipped,
    is_quantizable_linear,
)
from .io import SafetensorsCheckpoint, natural_key, read_config
from .validate import _config_shapes

__all__ = [
    "FOREIGN_METHODS",
    "NVFP4_BLOCK",
    "Nvfp4Info",
    "Nvfp4Source",
    "is_foreign_config",
    "parse_nvfp4_config",
    "preflight_nvfp4",
    "read_nvfp4_payloads",
    "split_by_tensor_scale",
    "validate_nvfp4_checkpoint",
]

NVFP4_BLOCK = 16
#: quant_method values of the checkpoints this module reads (``modelopt_fp4``: vLLM's name for a
#: legacy hf_quant_config.json with quant_algo NVFP4)
FOREIGN_METHODS = ("modelopt", "modelopt_fp4", "compressed-tensors")
_CT_FORMAT = "nvfp4-pack-quantized"
_MODELOPT_ALGOS = {"NVFP4": "W4A4", "W4A16_NVFP4": "W4A16"}


@dataclass(frozen=True)
class Nvfp4Source:
    """How one NVFP4 checkpoint stores its payloads (parsed from its ``quantization_config``)."""

    producer: str  # "modelopt" | "compressed-tensors"
    scheme: str  # "W4A4" | "W4A16": what the checkpoint was made for (activations are SharQ's)
    tool: str  # e.g. "nvidia-modelopt 0.47.0"
    packed: str  # tensor suffix of the packed codes
    global_scale: str  # tensor suffix of the FP32 per-tensor scale
    input_scale: str  # tensor suffix of the static activation scale (present for W4A4)
    global_is_divisor: bool  # compressed-tensors: t = 1 / global scale
    skip_layers: tuple[str, ...] = field(default_factory=tuple)  # SharQ skip_layers syntax
    scale: str = "weight_scale"

    @property
    def label(self) -> str:
        name = "ModelOpt NVFP4" if self.producer == "modelopt" else "compressed-tensors NVFP4"
        return f"{name} checkpoint ({self.tool}, {self.scheme})"

    @property
    def suffixes(self) -> tuple[str, str, str, str]:
        return (self.packed, self.scale, self.global_scale, self.input_scale)

    def tensor_scale(self, raw: torch.Tensor, name: str = "") -> torch.Tensor:
        """The FP32 dequantization multiplier t [1] from one stored per-tensor scale, computed as
        vLLM 0.32 computes it (ModelOpt: as stored; compressed-tensors: ``1.0 / g`` in FP32)."""
        if raw.numel() != 1 or raw.dtype != torch.float32:
            raise CheckpointError(
                f"tensor {name or self.global_scale}: {dtype_name(raw.dtype)} {list(raw.shape)}, "
                "expected one float32 value"
            )
        g = raw.detach().reshape(1).cpu()
        if not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
            raise CheckpointError(f"tensor {name or self.global_scale}: {g.item()!r} is not a finite positive scale")
        t = 1.0 / g if self.global_is_divisor else g.clone()
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise CheckpointError(f"tensor {name or self.global_scale}: {g.item()!r} gives tensor scale {t.item()!r}")
        return t

    def payload(self, packed: torch.Tensor, scale: torch.Tensor, raw_global: torch.Tensor,
                name: str = "") -> QuantizedBlocks:
        """SharQ's ``weight_block: 16`` payload of one stored layer (or shard), checked."""
        check_payload_tensors(name or "layer", packed, scale, self)
        return QuantizedBlocks(packed, scale, self.tensor_scale(raw_global, name).to(packed.device),
                               WEIGHT_FORMATS[NVFP4_BLOCK], NVFP4_BLOCK)


def check_payload_tensors(prefix: str, packed: torch.Tensor, scale: torch.Tensor, src: Nvfp4Source) -> None:
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise CheckpointError(
            f"tensor {prefix}.{src.packed}: {dtype_name(packed.dtype)} {list(packed.shape)}, expected uint8 [N, K/2]"
        )
    n, k = packed.shape[0], packed.shape[1] * 2
    if scale.dtype != SCALE_DTYPE or tuple(scale.shape) != (n, k // NVFP4_BLOCK) or k % NVFP4_BLOCK:
        raise CheckpointError(
            f"tensor {prefix}.{src.scale}: {dtype_name(scale.dtype)} {list(scale.shape)}, expected "
            f"float8_e4m3fn [{n}, {k // NVFP4_BLOCK}] (one scale per {NVFP4_BLOCK} of K={k})"
        )


# ---------------------------------------------------------------------------------------------
# quantization_config
# ---------------------------------------------------------------------------------------------
def is_foreign_config(qc: Mapping[str, Any] | None) -> bool:
    """A ``quantization_config`` of a checkpoint format this module reads (or refuses by name)."""
    return isinstance(qc, Mapping) and str(qc.get("quant_method", "")).lower() in FOREIGN_METHODS


def _refuse(what: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"sharq cannot serve this {what} checkpoint: {why}. SharQ serves NVFP4 weights (E2M1 with "
        f"one E4M3 scale per {NVFP4_BLOCK} and an FP32 tensor scale: ModelOpt quant_algo NVFP4 / "
        "W4A16_NVFP4, compressed-tensors nvfp4-pack-quantized) of dense decoder linears; serve "
        "this checkpoint without --quantization (vLLM's own method), or quantize the 16-bit model "
        "with `sharq-vllm quantize`"
    )


def parse_nvfp4_config(qc: Mapping[str, Any]) -> Nvfp4Source:
    """The :class:`Nvfp4Source` of a ModelOpt or compressed-tensors ``quantization_config`` (as
    config.json or vLLM gives it), or CheckpointError naming why SharQ cannot serve it: another
    algorithm or bit width, a group size other than 16, a quantized KV cache, targets other than
    every Linear, sparsity or transforms, output-activation quantization."""
    method = str(qc.get("quant_method", "")).lower()
    if method in ("modelopt", "modelopt_fp4"):
        return _parse_modelopt(qc)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc)
    raise _refuse(repr(method or None), f"quant_method {qc.get('quant_method')!r} is not ModelOpt or compressed-tensors")


def _parse_modelopt(qc: Mapping[str, Any]) -> Nvfp4Source:
    what = "ModelOpt"
    nested = qc.get("quantization")
    if nested is not None and not isinstance(nested, Mapping):
        raise _refuse(what, "'quantization' is not an object")
    src: Mapping[str, Any] = nested if nested is not None else qc
    algo = str(src.get("quant_algo") or "").upper()
    if algo not in _MODELOPT_ALGOS:
        raise _refuse(what, f"quant_algo {src.get('quant_algo')!r} is not NVFP4 or W4A16_NVFP4")
    groups = qc.get("config_groups") if nested is None else None
    sizes = {src.get("group_size")}
    if isinstance(groups, Mapping):
        sizes |= {(g.get("weights") or {}).get("group_size") for g in groups.values() if isinstance(g, Mapping)}
    if sizes - {None, NVFP4_BLOCK}:
        raise _refuse(what, f"weight group_size {sorted(map(str, sizes - {None}))}, not {NVFP4_BLOCK}")
    kv = src.get("kv_cache_quant_algo") or (qc.get("kv_cache_scheme") if nested is None else None)
    if kv:
        raise _refuse(what, f"it quantizes the KV cache ({kv!r}), which sharq does not load")
    scheme = _MODELOPT_ALGOS[algo]
    if scheme == "W4A4" and isinstance(groups, Mapping) and groups and all(
        isinstance(g, Mapping) and g.get("input_activations") is None for g in groups.values()
    ):
        scheme = "W4A16"  # vLLM's rule: NVFP4 without input quantization in any group
    if isinstance(groups, Mapping):
        _check_targets(what, groups)
    exclude = src.get("exclude_modules") if nested is not None else qc.get("ignore", qc.get("exclude_modules"))
    producer: Mapping[str, Any] = qc.get("producer") or {}
    if not isinstance(producer, Mapping):
        producer = {}
    return Nvfp4Source(
        producer="modelopt",
        scheme=scheme,
        tool=f"nvidia-modelopt {producer.get('version', '?')}",
        packed="weight",
        global_scale="weight_scale_2",
        input_scale="input_scale",
        global_is_divisor=False,
        skip_layers=tuple(_modelopt_skip(_names(what, exclude))),
    )


def _parse_compressed_tensors(qc: Mapping[str, Any]) -> Nvfp4Source:
    what = "compressed-tensors"
    status = qc.get("quantization_status")
    if status not in (None, "compressed"):
        raise _refuse(what, f"quantization_status {status!r}: its weights are not stored compressed")
    for key, name in (("sparsity_config", "sparsity compression"), ("transform_config", "transforms (rotations)")):
        if qc.get(key):
            raise _refuse(what, f"it uses {name} ({key})")
    if qc.get("kv_cache_scheme"):
        raise _refuse(what, "it quantizes the KV cache (kv_cache_scheme), which sharq does not load")
    groups = qc.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise _refuse(what, "no config_groups")
    a16 = []
    for gname, g in groups.items():
        if not isinstance(g, Mapping):
            raise _refuse(what, f"config_groups.{gname} is not an object")
        fmt = g.get("format") or qc.get("format")
        if fmt != _CT_FORMAT:
            raise _refuse(what, f"config_groups.{gname} has format {fmt!r}, not {_CT_FORMAT!r}")
        _check_nvfp4_args(what, f"config_groups.{gname}.weights", g.get("weights"))
        inp = g.get("input_activations")
        if inp is not None:
            _check_nvfp4_args(what, f"config_groups.{gname}.input_activations", inp, weights=False)
        if g.get("output_activations") is not None:
            raise _refuse(what, f"config_groups.{gname} quantizes output activations")
        a16.append(inp is None)
    _check_targets(what, groups)
    return Nvfp4Source(
        producer="compressed-tensors",
        scheme="W4A16" if all(a16) else "W4A4",
        tool=f"compressed-tensors {qc.get('version', '?')}",
        packed="weight_packed",
        global_scale="weight_global_scale",
        input_scale="input_global_scale",
        global_is_divisor=True,
        skip_layers=tuple(_ct_skip(_names(what, qc.get("ignore")))),
    )


def _check_nvfp4_args(what: str, where: str, args: Any, weights: bool = True) -> None:
    if not isinstance(args, Mapping):
        raise _refuse(what, f"{where} is missing")
    want = {"num_bits": 4, "type": "float", "group_size": NVFP4_BLOCK, "strategy": "tensor_group"}
    if weights:
        want["symmetric"] = True
    for key, value in want.items():
        if args.get(key, value) != value:
            raise _refuse(what, f"{where}.{key} is {args.get(key)!r}, not {value!r} (NVFP4)")
    if weights and args.get("dynamic"):
        raise _refuse(what, f"{where}.dynamic is {args.get('dynamic')!r}: weights quantized at run time")


def _check_targets(what: str, groups: Mapping[str, Any]) -> None:
    targets: set[Any] = set()
    for g in groups.values():
        t = g.get("targets") if isinstance(g, Mapping) else None
        targets.update(t if isinstance(t, list) else [t])
    if targets != {"Linear"}:
        raise _refuse(what, f"its config_groups target {sorted(map(str, targets))}; sharq serves "
                            "checkpoints that quantize every Linear layer (targets ['Linear']) but an ignore list")


def _names(what: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _refuse(what, f"its ignore / exclude_modules list is not a list of names: {value!r}")
    return list(value)


def _ct_skip(ignore: Sequence[str]) -> list[str]:
    """compressed-tensors ignore entries (exact names, ``re:`` + ``re.match``) in SharQ syntax."""
    return [f"re:^(?:{v[3:]})" if v.startswith("re:") else v for v in ignore]


def _modelopt_skip(exclude: Sequence[str]) -> list[str]:
    """ModelOpt exclude_modules (fnmatch wildcards; vLLM also matches plain names as substrings)."""
    return [v if any(c in v for c in "*?[") else "re:" + re.escape(v) for v in exclude]


# ---------------------------------------------------------------------------------------------
# payloads
# ---------------------------------------------------------------------------------------------
def split_by_tensor_scale(
    payloads: Sequence[QuantizedBlocks],
) -> list[QuantizedBlocks]:
    """Row-concatenate consecutive member payloads (q, k, v / gate, up) that share one tensor
    scale (bit-equal); members with different scales stay separate payloads. The tools' default
    (one scale per fused layer) gives one payload, as a SharQ checkpoint has."""
    out: list[QuantizedBlocks] = []
    for p in payloads:
        last = out[-1] if out else None
        assert p.tensor_scale is not None
        if last is not None and last.tensor_scale is not None and torch.equal(last.tensor_scale, p.tensor_scale):
            out[-1] = QuantizedBlocks(torch.cat([last.codes, p.codes]), torch.cat([last.block_scales, p.block_scales]),
                                      last.tensor_scale, last.fmt, last.block)
        else:
            out.append(p)
    return out


@dataclass
class Nvfp4Info:
    """What :func:`validate_nvfp4_checkpoint` found."""

    path: Path
    source: Nvfp4Source
    layers: list[str] = field(default_factory=list)  # quantized checkpoint modules
    per_shard: list[str] = field(default_factory=list)  # fused layers whose members' scales differ

    def summary(self) -> str:
        shards = (f"; {len(self.per_shard)} fused layers with per-member tensor scales "
                  f"(kept exact: one payload per member, e.g. {self.per_shard[0]})" if self.per_shard else "")
        return f"{len(self.layers)} quantized linears{shards}"


def validate_nvfp4_checkpoint(path: str | Path, source: Nvfp4Source | None = None) -> Nvfp4Info:
    """Check a ModelOpt / compressed-tensors NVFP4 folder from its safetensors headers (plus the
    one-value scales) before vLLM loads it: every decoder linear is quantized with the expected
    tensors, dtypes and shapes (matching config.json) or left 16-bit by the ignore list, fused
    members agree, nothing else is quantized (e.g. a 4-bit lm_head, which sharq keeps 16-bit).
    Raises CheckpointError naming the tensor."""
    root = Path(path)
    config = read_config(root)
    if source is None:
        qc = config.get("quantization_config")
        if not isinstance(qc, Mapping):
            raise CheckpointError(f"{root / 'config.json'}: no quantization_config")
        source = parse_nvfp4_config(qc)
    skip = SharQOptions(skip_layers=source.skip_layers)
    ckpt = SafetensorsCheckpoint(root)
    names = set(ckpt.names())
    info = Nvfp4Info(root, source)
    shapes = _config_shapes(config)
    quantized = sorted({n.rpartition(".")[0] for n in names if n.endswith("." + source.scale)}, key=natural_key)
    scales: dict[str, torch.Tensor] = {}
    for prefix in quantized:
        if not is_quantizable_linear(prefix):
            raise CheckpointError(
                f"tensor {prefix}.{source.scale}: {prefix} is quantized in the checkpoint, but sharq "
                "quantizes only the decoder linears (q/k/v/o, gate/up/down) and keeps the rest 16-bit"
            )
        if _skipped(skip, prefix):
            raise CheckpointError(f"tensor {prefix}.{source.packed}: {prefix} is quantized but the "
                                  "checkpoint's ignore list names it")
        for suffix in (source.packed, source.global_scale):
            if f"{prefix}.{suffix}" not in names:
                raise CheckpointError(f"tensor {prefix}.{suffix} is missing from the checkpoint")
        pname, sname = f"{prefix}.{source.packed}", f"{prefix}.{source.scale}"
        pshape, sshape = ckpt.shapes[pname], ckpt.shapes[sname]
        check_payload_tensors(prefix, torch.empty(pshape, dtype=ckpt.dtypes[pname], device="meta"),
                              torch.empty(sshape, dtype=ckpt.dtypes[sname], device="meta"), source)
        leaf = prefix.rpartition(".")[2]
        n, k = pshape[0], pshape[1] * 2
        if leaf in shapes and shapes[leaf] != (n, k):
            raise CheckpointError(f"tensor {pname}: shape {list(pshape)} means a [{n}, {k}] weight, but "
                                  f"config.json implies {list(shapes[leaf])}")
        gname = f"{prefix}.{source.global_scale}"
        scales[prefix] = source.tensor_scale(ckpt.get(gname), gname)
        info.layers.append(prefix)
    for name in sorted(names, key=natural_key):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module not in scales and is_quantizable_linear(module) \
                and not _skipped(skip, module):
            raise CheckpointError(f"tensor {name}: {module} is stored in {dtype_name(ckpt.dtypes[name])} but "
                                  "the checkpoint's ignore list does not name it")
    seen = set()
    for prefix in info.layers:
        fused, members = fused_group(prefix)
        if len(members) == 1 or fused in seen:
            continue
        seen.add(fused)
        missing = [m for m in members if m not in scales]
        if missing:
            raise CheckpointError(f"tensor {missing[0]}.{source.packed} is missing: {fused} is fused in vLLM "
                                  f"and needs all of {[m.rpartition('.')[2] for m in members]} quantized")
        if any(not torch.equal(scales[m], scales[members[0]]) for m in members):
            info.per_shard.append(fused)
    return info


def _skipped(skip: SharQOptions, module: str) -> bool:
    return is_module_skipped(skip, module)


def preflight_nvfp4(model: str | Path, source: Nvfp4Source) -> Nvfp4Info | None:
    """:func:`validate_nvfp4_checkpoint` for a local folder; None for a hub id (not local)."""
    root = Path(model)
    if not (root / "config.json").is_file():
        return None
    return validate_nvfp4_checkpoint(root, source)


def read_nvfp4_payloads(path: str | Path) -> tuple[Nvfp4Source, dict[str, QuantizedBlocks]]:
    """Every quantized linear of an NVFP4 folder as a SharQ payload, keyed by checkpoint module
    name (tests, the accuracy harness). Validates the folder first."""
    info = validate_nvfp4_checkpoint(path)
    src = info.source
    ckpt = SafetensorsCheckpoint(path)
    out = {}
    for prefix in info.layers:
        out[prefix] = src.payload(ckpt.get(f"{prefix}.{src.packed}"), ckpt.get(f"{prefix}.{src.scale}"),
                                  ckpt.get(f"{prefix}.{src.global_scale}"), prefix)
    return src, out
