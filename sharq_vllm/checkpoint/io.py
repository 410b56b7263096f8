"""Reading checkpoint folders: config.json, the safetensors files of a folder (from its index
when there is one; pickle files are refused, never opened) and their headers, tensors on demand.
Only safetensors are ever read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .format import CheckpointError, TensorSpec

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"

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


def natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def natural_sorted(items: Iterable[str]) -> list[str]:
    return sorted(items, key=natural_key)
