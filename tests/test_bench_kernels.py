"""CPU checks of benchmarks/kernels/bench_kernels.py's command line (the GPU runs use it as is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.kernels.bench_kernels", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_gemm_variants_must_name_known_kernels():
    """--gemm-variants takes names of dispatch.GEMM_VARIANTS; a typo is an error before any work,
    naming the known kernels (a silently empty sweep would read as 'no data')."""
    r = _run("--cpu-smoke", "--gemm-sweep", "--gemm-variants", "auto,wgmmrs")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "unknown ['wgmmrs']" in r.stderr and "wgmmars" in r.stderr, r.stderr[-2000:]


def test_model_shapes_come_from_the_serving_configs():
    """--model times another model's four linears, read from benchmarks/serving/configs (the
    shapes the serving benchmark runs); the default is Llama-3.1-8B's config."""
    from benchmarks.kernels import bench_kernels

    # Qwen2.5-7B: hidden 3584, 28 query heads and 4 KV heads of 128, intermediate 18944
    assert bench_kernels.model_shapes("Qwen2.5-7B") == {
        "qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
    assert bench_kernels.model_shapes("Llama-3.1-8B") == {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def test_unknown_model_is_an_error_before_any_work():
    r = _run("--cpu-smoke", "--model", "No-Such-Model")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--model No-Such-Model" in r.stderr, r.stderr[-2000:]
