"""SharQ options: the package's one settings model (no vLLM import).

Options come from ``quantization_config`` in the model's config.json, or, for a plain 16-bit
checkpoint, from the command line::

    --quantization sharq \\
    --hf-overrides '{"quantization_config": {"quant_method": "sharq", "format": "mxfp4"}}'

and from ``sharq-vllm quantize``'s flags. Every value is checked here so that a bad option stops
the server (or the quantizer) at once with a message that names the option, the bad value and
the accepted values. The accepted values are the numerics modules' own (formats.py, masks.py,
reference.py), and so are the rules derived from them (blocks, the K multiple): this module
only gathers them. The format/pattern codes the CUDA kernels take are mirrored from
``csrc/sharq_kernels.h`` (tests/test_options.py parses the header and compares).
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
    "FORMATS",
    "FORMAT_CODES",
    "OPTION_DOCS",
    "PATTERNS",
    "PATTERN_CODES",
    "WEIGHT_BLOCKS",
    "WEIGHT_ROUNDINGS",
    "FormatCode",
    "PatternCode",
    "SharQOptionError",
    "SharQOptions",
]

FORMATS: tuple[str, ...] = tuple(ACTIVATION_FORMATS)  # ("nvfp4", "mxfp4")
WEIGHT_BLOCKS: tuple[int, ...] = tuple(WEIGHT_FORMATS)  # (32, 16)
WEIGHT_ROUNDINGS: tuple[str, ...] = reference.WEIGHT_ROUNDINGS  # ("rtn", "search", "search-up")
ACT_SCALES: tuple[str, ...] = reference.ACT_SCALES  # ("token", "tensor")


class FormatCode(IntEnum):
    """``sharq::Format`` of csrc/sharq_kernels.h (the value the kernels take)."""

    NVFP4 = 0
    MXFP4 = 1


class PatternCode(IntEnum):
    """``sharq::Pattern`` of csrc/sharq_kernels.h."""

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

# keys vLLM/HF may put into a quantization_config that are not ours but harmless
_IGNORED_KEYS = {"quant_method", "version", "_load_in_4bit", "_load_in_8bit"}
_ALIASES = {"fmt": "format", "ignore": "skip_layers", "modules_to_not_convert": "skip_layers"}


class SharQOptionError(ValueError):
    """A bad SharQ option (raised at startup, before any weight is loaded)."""


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
    def from_dict(cls, config: Mapping[str, Any] | None) -> SharQOptions:
        config = dict(config or {})
        qm = config.get("quant_method", "sharq")
        if qm not in ("sharq", None, ""):
            raise SharQOptionError(f"sharq: quantization_config has quant_method={qm!r}, not 'sharq'")
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
        values = {k: _choice(k, merged.get(k, DEFAULTS[k]), v) for k, v in allowed.items()}
        return cls(skip_layers=tuple(_skip_list(merged.get("skip_layers"))), **values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return {"quant_method": "sharq", **d}

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
