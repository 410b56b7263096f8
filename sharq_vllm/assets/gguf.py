"""GGUF header metadata (without the gguf package) and the tokenizer behaviour it prescribes."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
