"""Writing SharQ checkpoints: a 16-bit Hugging Face checkpoint -> a SharQ checkpoint (format.py).

Reads the source with safetensors ``safe_open`` one fused group at a time (q/k/v, gate/up, or a
single tensor), so memory stays at about one output shard plus one group; writes sharded
safetensors, ``model.safetensors.index.json``, the tokenizer/generation files, config.json with
``quantization_config`` and a usage note appended to README.md (readme.py). The payload of every layer equals what SharQLinearMethod's online
quantization computes when vLLM loads the source checkpoint with the same dtype: fused groups
share one amax (format.py's docstring; tests/test_checkpoint.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..options import SharQOptions
from .format import (
    CheckpointError,
    fused_group,
    is_module_skipped,
    is_quantizable_linear,
    make_quantization_config,
    payload_to_tensors,
)
from .io import (
    INDEX_NAME,
    PICKLE_SUFFIXES,
    SafetensorsCheckpoint,
    natural_key,
    natural_sorted,
    read_config,
)
from .readme import add_usage_note

__all__ = ["DTYPES", "QuantizeReport", "numerics_digest", "quantize_checkpoint", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
_CONFIG_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
_FILE_MODE = 0o644
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".msgpack", ".h5", *PICKLE_SUFFIXES)


@dataclass
class QuantizeReport:
    src: Path
    dst: Path
    options: SharQOptions
    dtype: str
    quantized_layers: int = 0
    skipped_layers: list[str] = field(default_factory=list)
    copied_tensors: int = 0
    copied_files: list[str] = field(default_factory=list)
    src_bytes: int = 0
    dst_bytes: int = 0
    shards: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        ratio = self.dst_bytes / self.src_bytes if self.src_bytes else float("nan")
        return (
            f"quantized {self.quantized_layers} linear layers "
            f"({len(self.skipped_layers)} vLLM layers left 16-bit), copied {self.copied_tensors} 16-bit tensors "
            f"and {len(self.copied_files)} files in {self.seconds:.1f} s\n"
            f"size on disk: {_mb(self.src_bytes)} -> {_mb(self.dst_bytes)} "
            f"({ratio:.3f}x, {self.shards} shard(s)); options: {self.options.summary()}; "
            f"dtype {self.dtype}\n"
            f"serve: vllm serve {self.dst}"
            + ("" if self.dtype.startswith("auto") else f" --dtype {self.dtype}")
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def resolve_dtype(dtype: str, config: dict[str, Any]) -> tuple[str, torch.dtype]:
    """The dtype vLLM will load the weights in: ``auto`` follows vLLM's rule (config dtype if
    16-bit, float32 downcast to bfloat16). Online quantization sees the weight in this dtype, so
    the offline quantizer must too for a bit-identical payload."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise CheckpointError(f"unsupported --dtype {dtype!r}; expected auto or one of {sorted(DTYPES)}")
        return dtype, DTYPES[dtype]
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    raw = config.get("dtype") or config.get("torch_dtype")
    if raw is None and text_cfg is not None:
        raw = text_cfg.get("dtype") or text_cfg.get("torch_dtype")
    name = _CONFIG_DTYPE_ALIASES.get(str(raw), str(raw)) if raw else "bfloat16"
    if name not in ("bfloat16", "float16"):
        name = "bfloat16"  # vLLM downcasts float32 (and unknown) models to bfloat16 on GPU
    return "auto", DTYPES[name]


class _ShardWriter:
    def __init__(self, tmp: Path, max_bytes: int, metadata: dict[str, str]) -> None:
        self.tmp = tmp
        self.max_bytes = max_bytes
        self.metadata = metadata
        self.buf: dict[str, torch.Tensor] = {}
        self.buf_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.buf_bytes + n > self.max_bytes:
            self.flush()
        self.buf[name] = t.contiguous()
        self.buf_bytes += n
        self.total_bytes += n

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        path = self.tmp / f"shard-{len(self.shards):05d}.safetensors.partial"
        save_file(self.buf, str(path), metadata=self.metadata)
        path.chmod(_FILE_MODE)  # safetensors writes 0600; servers often run as another uid
        self.shards.append((path, list(self.buf)))
        self.buf = {}
        self.buf_bytes = 0

    def finish(self) -> dict[str, str]:
        """Rename shards to HF names and return the weight map."""
        self.flush()
        n = len(self.shards)
        weight_map: dict[str, str] = {}
        for i, (path, names) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.tmp / final)
            for name in names:
                weight_map[name] = final
        return weight_map


def _dir_bytes(path: Path, suffix: str = ".safetensors") -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name.endswith(suffix))


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    options: SharQOptions,
    *,
    dtype: str = "auto",
    max_shard_bytes: int = 2 * 1024**3,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> QuantizeReport:
    """Quantize the 16-bit checkpoint folder ``src`` into the SharQ checkpoint folder ``dst``."""
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if config.get("quantization_config") is not None:
        method = (config["quantization_config"] or {}).get("quant_method", "?")
        raise CheckpointError(
            f"{src / 'config.json'}: already quantized (quant_method={method!r}); "
            "sharq-vllm quantize needs a 16-bit checkpoint"
        )
    ckpt = SafetensorsCheckpoint(src)
    if src.resolve() == dst.resolve() or src.resolve() in dst.resolve().parents:
        raise CheckpointError(f"{dst}: the destination must be outside the source folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"{dst}: exists and is not empty (pass --overwrite to replace it)")
    moe = [n for n in ckpt.names() if ".experts." in n]
    if moe:
        raise CheckpointError(
            f"tensor {moe[0]}: mixture-of-experts checkpoints are not supported by the offline "
            "quantizer yet (serve the 16-bit checkpoint with --quantization sharq)"
        )
    dtype_label, qdtype = resolve_dtype(dtype, config)

    # -- plan: which modules are quantized, grouped as vLLM fuses them ------------------------
    names = set(ckpt.names())
    linear_modules = {
        n.removesuffix(".weight")
        for n in names
        if n.endswith(".weight") and is_quantizable_linear(n.removesuffix(".weight"))
    }
    k_mult = options.required_k_multiple
    groups: dict[str, list[str]] = {}
    skipped: list[str] = []
    for module in natural_sorted(linear_modules):
        fused, members = fused_group(module)
        if fused in groups or fused in skipped:
            continue
        present = [m for m in members if m in linear_modules]
        if is_module_skipped(options, present[0]):
            skipped.append(fused)
            continue
        for m in present:
            shape = ckpt.shapes[f"{m}.weight"]
            if len(shape) != 2:
                raise CheckpointError(f"tensor {m}.weight: expected a 2-D [out, in] weight, got {list(shape)}")
            if shape[1] % k_mult:
                raise CheckpointError(
                    f"tensor {m}.weight: input dim {shape[1]} is not a multiple of {k_mult}, which "
                    f"SharQ with {options.summary()} needs; leave it 16-bit with "
                    f"--skip '{_escape_suffix(fused)}'"
                )
        groups[fused] = present
    if not groups:
        raise CheckpointError(
            f"{src}: no decoder linear layer to quantize (expected names like "
            "model.layers.0.self_attn.q_proj.weight; all skipped or an unsupported architecture)"
        )
    member_of = {m: fused for fused, ms in groups.items() for m in ms}

    # work items in checkpoint order: a group at its first member, other tensors alone
    items: list[tuple[str, list[str]]] = []
    done: set[str] = set()
    for name in natural_sorted(names):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in member_of:
            fused = member_of[module]
            if fused not in done:
                done.add(fused)
                items.append((fused, [f"{m}.weight" for m in groups[fused]]))
        else:
            items.append(("", [name]))

    # -- write --------------------------------------------------------------------------------
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    qname = str(qdtype).removeprefix("torch.")
    report = QuantizeReport(src, dst, options, f"auto ({qname})" if dtype_label == "auto" else qname)
    try:
        writer = _ShardWriter(tmp, max_shard_bytes, {"format": "pt", "sharq_checkpoint_version": "1"})
        total = sum(ckpt.nbytes(n) for n in names)
        n_layers = sum(len(members) for members in groups.values())
        with _progress(total, progress) as bar:
            for fused, tensor_names in items:
                if fused:
                    ws = [ckpt.get(n).to(qdtype) for n in tensor_names]
                    amax = torch.stack([w.float().abs().amax() for w in ws]).amax().reshape(1)
                    for n, w in zip(tensor_names, ws, strict=True):
                        for out_name, t in _quantize(n, w, amax, options).items():
                            writer.add(out_name, t)
                        report.quantized_layers += 1
                    del ws
                else:
                    (n,) = tensor_names
                    t = ckpt.get(n)
                    if t.is_floating_point() and t.dtype != qdtype and t.element_size() >= 2:
                        t = t.to(qdtype)
                    writer.add(n, t)
                    report.copied_tensors += 1
                if fused:
                    bar.set_postfix_str(f"{report.quantized_layers}/{n_layers} layers, {fused}", refresh=False)
                bar.update(sum(ckpt.nbytes(n) for n in tensor_names))
        weight_map = writer.finish()
        report.shards = len(writer.shards)
        report.skipped_layers = skipped
        provenance = {
            "tool": f"sharq-vllm {__version__}",
            "source": str(src.resolve()),
            "dtype": qname,
            "quantized_layers": report.quantized_layers,
            "skipped_layers": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "numerics_sha256": numerics_digest(),
        }
        index = {
            "metadata": {"total_size": writer.total_bytes, "sharq": provenance},
            "weight_map": dict(sorted(weight_map.items(), key=lambda kv: natural_key(kv[0]))),
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for p in sorted(src.iterdir()):
            if not p.is_file() or p.name == "config.json" or p.name == INDEX_NAME:
                continue
            if p.name.endswith(_WEIGHT_SUFFIXES) or p.name.startswith("."):
                continue
            shutil.copy2(p, tmp / p.name)
            report.copied_files.append(p.name)
        add_usage_note(tmp, options)
        new_config = dict(config)
        new_config["quantization_config"] = make_quantization_config(options)
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2) + "\n")
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.src_bytes = ckpt.file_bytes()
    report.dst_bytes = _dir_bytes(dst)
    report.seconds = time.perf_counter() - t0
    return report


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        return None


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm byte progress bar on stderr (bytes read, and layers quantized so far with the
    current one), or a no-op when disabled or tqdm is not installed."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, unit="B", unit_scale=True, desc="sharq quantize")
    return _NoBar()


def numerics_digest() -> str:
    """sha256 of the reference numerics sources the payload was computed with (fp4, scales,
    formats, reference): two checkpoints with the same digest and options have the same bits;
    a different digest says the numerics code changed in between."""
    import hashlib

    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    for name in ("fp4.py", "scales.py", "formats.py", "reference.py"):
        h.update(name.encode() + b"\0" + (pkg / name).read_bytes())
    return h.hexdigest()


def _escape_suffix(module: str) -> str:
    """A --skip regex matching exactly this module (its layer index and leaf)."""
    import re

    parts = module.split(".")
    return re.escape(".".join(parts[-4:])) + "$" if len(parts) >= 4 else re.escape(module) + "$"


def _quantize(name: str, w: torch.Tensor, amax: torch.Tensor, options: SharQOptions) -> dict[str, torch.Tensor]:
    try:
        payload = options.quantize_weight(w, tensor_amax=amax)
    except ValueError as e:
        raise CheckpointError(f"tensor {name}: {e}") from None
    return payload_to_tensors(name.removesuffix(".weight"), payload)
