"""SharQ options: parsing and validation, independent of vLLM (importable without it).

Options come from ``quantization_config`` in the model's config.json, or, for a plain
16-bit checkpoint, from the command line::

    --quantization sharq \\
    --hf-overrides '{"quantization_config": {"quant_method": "sharq", "format": "mxfp4"}}'

Every value is checked here so that a bad option stops the server at startup with a message
that names the option, the bad value and the accepted values.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DEFAULTS",
    "FORMATS",
    "OPTION_DOCS",
    "PATTERNS",
    "SharQOptionError",
    "SharQOptions",
]

FORMATS = ("nvfp4", "mxfp4")
PATTERNS = ("4:8-pairs", "2:4", "dense")
WEIGHT_BLOCKS = (32, 16)
WEIGHT_ROUNDINGS = ("rtn", "search", "search-up")  # == sharq_vllm.reference.WEIGHT_ROUNDINGS (test)
ACT_SCALES = ("token", "tensor")

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
    "act_scale": "activation tensor-scale granularity: token (default) or tensor (paper)",
}

#: the paper-faithful defaults (DESIGN.md: keep them as the default and measured reference)
DEFAULTS: dict[str, Any] = {
    "format": "nvfp4",
    "pattern": "4:8-pairs",
    "skip_layers": [],
    "weight_block": 32,
    "weight_rounding": "rtn",
    "act_scale": "token",
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
    format: str = "nvfp4"
    pattern: str = "4:8-pairs"
    skip_layers: tuple[str, ...] = field(default_factory=tuple)
    weight_block: int = 32
    weight_rounding: str = "rtn"
    act_scale: str = "token"

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
        fmt = _choice("format", merged.get("format", DEFAULTS["format"]), FORMATS)
        pattern = _choice("pattern", merged.get("pattern", DEFAULTS["pattern"]), PATTERNS)
        wb = _choice("weight_block", merged.get("weight_block", DEFAULTS["weight_block"]), WEIGHT_BLOCKS)
        wr = _choice(
            "weight_rounding", merged.get("weight_rounding", DEFAULTS["weight_rounding"]), WEIGHT_ROUNDINGS
        )
        acts = _choice("act_scale", merged.get("act_scale", DEFAULTS["act_scale"]), ACT_SCALES)
        skip = _skip_list(merged.get("skip_layers"))
        return cls(
            format=fmt,
            pattern=pattern,
            skip_layers=tuple(skip),
            weight_block=wb,
            weight_rounding=wr,
            act_scale=acts,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return {"quant_method": "sharq", **d}

    @property
    def activation_block(self) -> int:
        return 16 if self.format == "nvfp4" else 32

    @property
    def required_k_multiple(self) -> int:
        """What every quantized layer's K (per TP shard) must be a multiple of: the largest
        block used (backbone block = 2x the activation block unless pattern is dense; the
        N:M group; the weight block). Matches ``sharq_vllm.reference.required_multiple``."""
        backbone = self.activation_block * (1 if self.pattern == "dense" else 2)
        group = {"2:4": 4, "4:8-pairs": 8, "dense": 1}[self.pattern]
        return max(backbone, group, self.weight_block)

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

    def summary(self) -> str:
        skip = ",".join(self.skip_layers) or "-"
        return (
            f"format={self.format} pattern={self.pattern} weight_block={self.weight_block} "
            f"weight_rounding={self.weight_rounding} act_scale={self.act_scale} skip_layers={skip}"
        )
