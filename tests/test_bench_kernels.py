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
