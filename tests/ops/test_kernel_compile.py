"""What ptxas says about the wgmma GEMM (sharq_vllm/csrc/gemm_wgmma.cu), checked on the CPU
machine with the build's own flags (sharq_vllm.kernels.build): the asynchronous MMAs must not be
serialized and nothing may spill.

ptxas serializes wgmma (inserts a wait after every MMA) when it cannot prove that no ordinary
instruction writes an accumulator register while MMAs are in flight (its "C7515" performance
note). The kernel still computes the right numbers, so no GPU test would see it; it happened in
development after an innocent edit (an address computed inside the refill path), and costs the
overlap the kernel is built for. Skipped where nvcc is missing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sharq_vllm.kernels import build

NVCC = build.nvcc_path()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA_HOME, no nvcc on PATH)")
def test_wgmma_kernels_compile_without_serialization_or_spills(tmp_path: Path) -> None:
    src = Path(build.CSRC) / "gemm_wgmma.cu"
    cmd = [NVCC, *build.nvcc_flags(), "-cubin", "-o", str(tmp_path / "gemm_wgmma.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    entries = re.findall(r"Compiling entry function '(\S+)'", log)
    # both kernels, both 16-bit types: the decoder-warp kernel at BM = 64 / 128, the token-wide one
    assert sum("gemm_wgmma_dec_kernel" in e for e in entries) == 4, entries
    assert sum("gemm_wgmma_wide_kernel" in e for e in entries) == 2, entries
    assert "C7515" not in log, [line for line in log.splitlines() if "C7515" in line]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == len(entries) and all(s == ("0", "0") for s in spills), spills
