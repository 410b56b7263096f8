"""SharQ options: the package's one settings model (no vLLM import).

Options come from ``quantization_config`` in the model's config.json, or, for a plain 16-bit
checkpoint, from the command line::

    --quantization sharq \\
    --hf-overrides '{"quantization_config": {"quant_method": "sharq", "format": "mxfp4"}}'

and from ``sharq-vllm quantize``'s flags. Named presets (:data:`PRESETS`) give a whole
configuration one name: ``--quantization sharq`` (the paper's defaults) or ``--quantization
sharq-plus`` (the recommended configuration), ``sharq-vllm quantize --preset NAME``; values given
explicitly override the preset's. Every value is checked here so that a bad option stops
the server (or the quantizer) at once with a message that names the option, the bad value and
the accepted values. The accepted values are the numerics modules' own (formats.py, masks.py,
reference.py), and so are the rules derived from them (blocks, the K multiple): this module
only gathers them. The format/pattern codes the CUDA kernels take are mirrored from
``sharq_vllm/csrc/sharq_kernels.h`` (tests/test_options.py parses the header and compares).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

import torch

from . import reference
from .formats import ACTIVATION_FORMATS, WEIGHT_FORMATS, QuantizedBlocks
from .masks import PATTERNS

__all__ = [
    "ACT_SCALES",
    "DEFAULTS",
    "DEFAULT_PRESET",
    "FORMATS",
    "FORMAT_CODES",
    "OPTION_DOCS",
    "PATTERNS",
    "PATTERN_CODES",
    "PRESETS",
    "PRESET_DOCS",
    "WEIGHT_BLOCKS",
    "WEIGHT_ROUNDINGS",
    "FormatCode",
    "PatternCode",
    "SharQOptionError",
    "SharQOptions",
    "preset_defaults",
]

FORMATS: tuple[str, ...] = tuple(ACTIVATION_FORMATS)  # ("nvfp4", "mxfp4")
WEIGHT_BLOCKS: tuple[int, ...] = tuple(WEIGHT_FORMATS)  # (32, 16)
WEIGHT_ROUNDINGS: tuple[str, ...] = reference.WEIGHT_ROUNDINGS  # ("rtn", "search", "search-up")
ACT_SCALES: tuple[str, ...] = reference.ACT_SCALES  # ("token", "tensor")


class FormatCode(IntEnum):
    """``sharq::Format`` of sharq_vllm/csrc/sharq_kernels.h (the value the kernels take)."""

    NVFP4 = 0
    MXFP4 = 1


class PatternCode(IntEnum):
    """``sharq::Pattern`` of sharq_vllm/csrc/sharq_kernels.h."""

    DENSE = 0
    TWO_OF_FOUR = 1
    FOUR_OF_EIGHT_PAIRS = 2


FORMAT_CODES: dict[str, FormatCode] = {"nvfp4": FormatCode.NVFP4, "mxfp4": FormatCode.MXFP4}
PATTERN_CODES: dict[str, PatternCode] = {
    "dense": PatternCode.DENSE,
    "2:4": PatternCode.TWO_OF_FOUR,
    "4:8-pairs": PatternCode.FOUR_OF_EIGHT_PAIRS,
}

OPTION_DOCS: dict[str, str] = {
    "format": "activation FP4 format: nvfp4 (E4M3 scales, block 16) or mxfp4 (E8M0, block 32)",
    "pattern": "sparse-backbone N:M pattern: 4:8-pairs (paper default with nvfp4), 2:4, or "
    "dense (the paper's dense+dense ablation)",
    "skip_layers": "list of layer names left in 16 bits: exact names, name suffixes "
    "('o_proj', 'layers.0.mlp.down_proj'), fnmatch globs ('*.layers.0.*') or 're:REGEX'",
    "weight_block": "weight scale block along K: 32 (paper, shared payload) or 16 (sharq-plus)",
    "weight_rounding": "weight rounding: rtn (paper), search-up (sharq-plus: per block the "
    "least-squares E4M3 scale among RTN's and the 6 larger ones) or search (least squares over "
    "RTN-4 .. RTN+1, may clip the block's largest weight)",
    "act_scale": "activation tensor-scale granularity: token (default; CUDA preparation kernel) "
    "or tensor (paper; PyTorch preparation, then the CUDA GEMM)",
}

#: the paper-faithful defaults: the default and the measured reference (docs/ACCURACY.md)
DEFAULTS: dict[str, Any] = {
    "format": FORMATS[0],
    "pattern": PATTERNS[0],
    "skip_layers": [],
    "weight_block": WEIGHT_BLOCKS[0],
    "weight_rounding": WEIGHT_ROUNDINGS[0],
    "act_scale": ACT_SCALES[0],
}

#: Named configurations: name -> the option values that differ from :data:`DEFAULTS`. Each name
#: is a vLLM quantization method (``--quantization NAME``, sharq_vllm.vllm_plugin.presets) and a
#: ``sharq-vllm quantize --preset``; explicit options override a preset's values one by one.
#: "sharq-plus" is the configuration docs/ACCURACY.md recommends (the accuracy harness's
#: "sharq-plus" method; tests/test_presets.py checks they agree).
PRESETS: dict[str, dict[str, Any]] = {
    "sharq": {},
    "sharq-plus": {"pattern": "2:4", "weight_block": 16, "weight_rounding": "search-up"},
}
DEFAULT_PRESET = "sharq"
PRESET_DOCS: dict[str, str] = {
    "sharq": "the paper's configuration: nvfp4, 4:8-pairs backbone, 32-channel RTN weight scales "
    "(4.25 bits a weight)",
    "sharq-plus": "the recommended configuration: nvfp4, 2:4 backbone, 16-channel search-up weight "
    "scales (4.5 bits a weight; docs/ACCURACY.md)",
}

# keys vLLM/HF may put into a quantization_config that are not ours but harmless
_IGNORED_KEYS = {"quant_method", "version", "_load_in_4bit", "_load_in_8bit"}
_ALIASES = {"fmt": "format", "ignore": "skip_layers", "modules_to_not_convert": "skip_layers"}


class SharQOptionError(ValueError):
    """A bad SharQ option (raised at startup, before any weight is loaded)."""


def preset_defaults(name: str) -> dict[str, Any]:
    """Every option's value under the preset ``name`` (:data:`DEFAULTS` updated by the preset)."""
    if name not in PRESETS:
        raise SharQOptionError(f"sharq: unknown preset {name!r}; expected one of {list(PRESETS)}")
    return {**DEFAULTS, **PRESETS[name]}


def _choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if isinstance(value, str):
        value = value.strip()
        if name in ("format", "weight_rounding", "act_scale"):
            value = value.lower()
    if name == "weight_block" and isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or value not in allowed:
        raise SharQOptionError(
            f"sharq: invalid {name}={value!r}; expected one of {list(allowed)} "
            f"({OPTION_DOCS[name]})"
        )
    return value


def _skip_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SharQOptionError(
            f"sharq: invalid skip_layers={value!r}; expected a list of layer-name strings "
            f"({OPTION_DOCS['skip_layers']})"
        )
    out = []
    for v in value:
        v = v.strip()
        if not v:
            raise SharQOptionError("sharq: skip_layers contains an empty name")
        if v.startswith("re:"):
            try:
                re.compile(v[3:])
            except re.error as e:
                raise SharQOptionError(f"sharq: skip_layers entry {v!r} is not a valid regex: {e}") from None
        out.append(v)
    return out


@dataclass(frozen=True)
class SharQOptions:
    format: str = DEFAULTS["format"]
    pattern: str = DEFAULTS["pattern"]
    skip_layers: tuple[str, ...] = field(default_factory=tuple)
    weight_block: int = DEFAULTS["weight_block"]
    weight_rounding: str = DEFAULTS["weight_rounding"]
    act_scale: str = DEFAULTS["act_scale"]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None, preset: str | None = None) -> SharQOptions:
        """Options from a ``quantization_config``-style dict. Values it does not give come from
        a preset: the one its ``quant_method`` names when that is not plain ``sharq``, else
        ``preset`` (the vLLM method's, e.g. ``--quantization sharq-plus``), else ``sharq``."""
        config = dict(config or {})
        qm = config.get("quant_method", DEFAULT_PRESET)
        if qm not in (*PRESETS, None, ""):
            raise SharQOptionError(
                f"sharq: quantization_config has quant_method={qm!r}, not one of {list(PRESETS)}"
            )
        named = qm if qm not in (None, "", DEFAULT_PRESET) else None
        if named and preset not in (None, DEFAULT_PRESET, named):
            raise SharQOptionError(
                f"sharq: quantization_config has quant_method={qm!r} but the method is {preset!r}; "
                "name one preset"
            )
        base = preset_defaults(named or preset or DEFAULT_PRESET)
        merged: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            if key in _IGNORED_KEYS:
                continue
            key = _ALIASES.get(key, key)
            if key not in DEFAULTS:
                unknown.append(key)
                continue
            merged[key] = value
        if unknown:
            raise SharQOptionError(
                f"sharq: unknown option(s) {sorted(unknown)} in quantization_config; "
                f"accepted: {sorted(DEFAULTS)}"
            )
        allowed = {"format": FORMATS, "pattern": PATTERNS, "weight_block": WEIGHT_BLOCKS,
                   "weight_rounding": WEIGHT_ROUNDINGS, "act_scale": ACT_SCALES}
        values = {k: _choice(k, merged.get(k, base[k]), v) for k, v in allowed.items()}
        skip = merged.get("skip_layers", base["skip_layers"])
        return cls(skip_layers=tuple(_skip_list(skip)), **values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return {"quant_method": "sharq", **d}

    def preset(self) -> str | None:
        """The preset these options are exactly (skip_layers aside), or None (custom)."""
        mine = {k: v for k, v in asdict(self).items() if k != "skip_layers"}
        for name in PRESETS:
            values = preset_defaults(name)
            if all(values[k] == v for k, v in mine.items()):
                return name
        return None

    # -- rules derived from the options (each defined once, in the numerics modules) -----------
    @property
    def activation_block(self) -> int:
        """Channels per residual (dense) activation scale: the format's block."""
        return reference.residual_block(self.format)

    @property
    def backbone_block(self) -> int:
        """Channels per backbone scale: 2x the activation block unless the pattern is dense."""
        return reference.backbone_block(self.format, self.pattern)

    @property
    def required_k_multiple(self) -> int:
        """What every quantized layer's K (per TP shard) must be a multiple of."""
        return reference.required_k_multiple(self.format, self.pattern, self.weight_block)

    def quantize_weight(self, w: torch.Tensor, tensor_amax: torch.Tensor | None = None) -> QuantizedBlocks:
        """The shared FP4 weight payload of ``w`` under these options (the one place options
        become a payload: online quantization at load and ``sharq-vllm quantize`` both call it).
        ``tensor_amax``: the fused layer's (all-reduced) amax; default: ``w``'s own."""
        return reference.quantize_weight(
            w, block=self.weight_block, rounding=self.weight_rounding, tensor_amax=tensor_amax
        )

    # -- which layers stay 16-bit --------------------------------------------------------------
    def is_skipped_name(self, name: str) -> bool:
        """Whether the (unfused) layer ``name`` matches a skip_layers entry."""
        for pat in self.skip_layers:
            if pat.startswith("re:"):
                if re.search(pat[3:], name):
                    return True
            elif any(ch in pat for ch in "*?["):
                if fnmatch.fnmatchcase(name, pat):
                    return True
            elif name == pat or name.endswith("." + pat):
                return True
        return False

    def is_layer_skipped(self, layer: str, members: Sequence[str] = ()) -> bool:
        """Whether the layer ``layer`` stays 16-bit; the one rule the vLLM plugin and the
        checkpoint tools share. ``members``: full names of the checkpoint layers fused into it
        (``...q_proj``, ``...k_proj``, ``...v_proj`` for ``...qkv_proj``), empty when unfused.

        A fused layer is skipped when skip_layers matches its own name or every member; matching
        only some members is an error (one payload spans the fused rows)."""
        if not self.skip_layers:
            return False
        own = self.is_skipped_name(layer)
        if own or not members:
            return own
        flags = [self.is_skipped_name(m) for m in members]
        if all(flags):
            return True
        if any(flags):
            on = [m.rpartition(".")[2] for m, f in zip(members, flags, strict=True) if f]
            off = [m.rpartition(".")[2] for m, f in zip(members, flags, strict=True) if not f]
            raise SharQOptionError(
                f"sharq: {layer}: skip_layers matches {on} but not {off}, only some of the layers "
                f"fused into one {layer.rpartition('.')[2]} layer (one payload spans them); "
                "skip all of them or none"
            )
        return False

    def summary(self) -> str:
        skip = ",".join(self.skip_layers) or "-"
        return (
            f"format={self.format} pattern={self.pattern} weight_block={self.weight_block} "
            f"weight_rounding={self.weight_rounding} act_scale={self.act_scale} skip_layers={skip}"
        )

    def label(self) -> str:
        """The short form in the per-layer load log: ``nvfp4 4:8-pairs w32 rtn act=token``."""
        return f"{self.format} {self.pattern} w{self.weight_block} {self.weight_rounding} act={self.act_scale}"
