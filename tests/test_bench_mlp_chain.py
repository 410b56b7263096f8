"""benchmarks/kernels/bench_mlp_chain.py on the CPU (reference ops): both chains run, every row is
timed; its GPU numbers are benchmarks/results/mlp-chain-H200.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mlp_chain_cpu_smoke() -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.kernels.bench_mlp_chain", "--cpu-smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("M=")]
    assert len(lines) == 2
    for ln in lines:
        for row in ("chain_unfused", "chain_fused", "act_unfused", "act_fused", "silu", "prep"):
            assert f" {row} " in f"{ln} ", ln
