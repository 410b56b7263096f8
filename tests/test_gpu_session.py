"""tools/gpu/gpu_session.sh, the CPU-side half: `pack` splits model files into per-call folders
under the travel limit, `stash` + `join` put them back together on the device (here: a
temporary HOME) bit for bit, checked against the manifest's sha256."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu" / "gpu_session.sh"
MiB = 1 << 20


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("size", [5 * MiB + 12345, 3 * MiB])
def test_pack_stash_join_round_trip(tmp_path, size):
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    (cache / "corpora").mkdir()
    (cache / "corpora" / "code-x-1-v1.txt").write_text("def f():\n    return 1\n" * 1000)
    tok_dir = cache / "models" / "smollm2-bfloat16"
    tok_dir.mkdir(parents=True)
    (tok_dir / "tokenizer.json").write_text('{"model": "fake"}')
    (tok_dir / "model.safetensors").write_bytes(b"not carried")
    data = os.urandom(size)
    (cache / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(data)
    home = tmp_path / "home"
    home.mkdir()
    carry = tmp_path / "carry"
    limit = 2 * MiB + 4096
    env = {**os.environ, "HOME": str(home), "CARRY_DIR": str(carry), "LIMIT": str(limit),
           "SHARQ_VLLM_CACHE_LOCAL": str(cache), "PACK_MODELS": "smollm2", "PACK_VLLM": "0"}
    # no vLLM bundle parts (PACK_VLLM=0), so every call carries model pieces
    work = tmp_path / "work"
    work.mkdir()
    r = _run(["pack"], env, work)
    assert r.returncode == 0, r.stderr
    calls = sorted(carry.iterdir())
    assert len(calls) >= 2
    for c in calls:  # every call stays under the limit
        assert sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) <= limit, c
    # the device side, from the repo root as on the machine; one call at a time
    for i, c in enumerate(calls):
        r = _run(["stash", str(c)], env, REPO)
        assert r.returncode == 0, r.stderr
        if i < len(calls) - 1:  # not complete yet: join must refuse
            assert _run(["join", "smollm2", str(tmp_path / "early.gguf")], env, REPO).returncode != 0
    out = tmp_path / "joined.gguf"
    r = _run(["join", "smollm2", str(out)], env, REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (home / "stash" / "cache" / "corpora" / "code-x-1-v1.txt").read_text().startswith("def f")
    # the CPU machine's tokenizer files travel (the device's transformers may convert them wrongly)
    assert (home / "stash" / "smollm2-tokenizer" / "tokenizer.json").read_text() == '{"model": "fake"}'
    assert not (home / "stash" / "smollm2-tokenizer" / "model.safetensors").exists()


def test_pack_moves_the_small_files_past_a_full_first_call(tmp_path):
    # call 1 carries bundle part 1, the prebuilt library and the serving shapes; when they fill
    # it, the tokenizers / corpora / wheel go with the first call that has room, and an empty
    # call folder stashes as nothing
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    tok_dir = cache / "models" / "smollm2-bfloat16"
    tok_dir.mkdir(parents=True)
    (tok_dir / "tokenizer.json").write_text('{"model": "fake"}')
    data = os.urandom(3 * MiB)
    (cache / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(data)
    parts = tmp_path / "vllm-parts"
    (parts / "p1").mkdir(parents=True)
    limit = 2 * MiB
    (parts / "p1" / "part0").write_bytes(b"\0" * limit)  # no room left in call 1
    home, carry = tmp_path / "home", tmp_path / "carry"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CARRY_DIR": str(carry), "LIMIT": str(limit),
           "SHARQ_VLLM_CACHE_LOCAL": str(cache), "PACK_MODELS": "smollm2",
           "PACK_VLLM_DIR": str(parts)}
    r = _run(["pack"], env, REPO)
    assert r.returncode == 0, r.stderr
    calls = sorted(carry.iterdir())
    assert not any(calls[0].iterdir()), "call 1 had no room"
    assert (calls[1] / "extra" / "smollm2-tokenizer").is_dir()
    for c in calls[1:]:
        assert sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) <= limit, c
    for c in calls:
        r = _run(["stash", str(c)], env, REPO)
        assert r.returncode == 0 and "cannot stat" not in r.stderr, r.stderr
    out = tmp_path / "joined.gguf"
    assert _run(["join", "smollm2", str(out)], env, REPO).returncode == 0
    assert out.read_bytes() == data
    assert (home / "stash" / "smollm2-tokenizer" / "tokenizer.json").exists()


def test_join_detects_a_corrupt_piece(tmp_path):
    home = tmp_path / "home"
    stash = home / "stash"
    stash.mkdir(parents=True)
    a, b = os.urandom(1000), os.urandom(700)
    (stash / "qwen.gguf.000").write_bytes(a)
    (stash / "qwen.gguf.001").write_bytes(b)
    digest = hashlib.sha256(a + b).hexdigest()
    (stash / "qwen.gguf.manifest").write_text(f"q.gguf 2 1700 {digest}\n")
    env = {**os.environ, "HOME": str(home)}
    assert _run(["join", "qwen", str(tmp_path / "ok.gguf")], env, REPO).returncode == 0
    (stash / "qwen.gguf.001").write_bytes(b[:-1] + bytes([b[-1] ^ 1]))
    r = _run(["join", "qwen", str(tmp_path / "bad.gguf")], env, REPO)
    assert r.returncode != 0 and "sha256 mismatch" in r.stdout
