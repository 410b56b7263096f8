"""What ptxas says about the GEMMs, checked on the CPU machine with the build's own flags
(sharq_vllm.kernels.build): in the wgmma GEMM (sharq_vllm/csrc/gemm_wgmma.cu) the asynchronous
MMAs must not be serialized and nothing may spill; the decode stream kernel for M <= 8
(gemm.cu, MT = 1, two accumulator sets) must not spill either; the register-source wgmma kernel
(gemm_wgmma_rs.cu) must not be serialized.

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
    # both kernels, both 16-bit types: the decoder-warp kernel at BM = 64 (256 and 224 weight rows)
    # and 128, the token-wide one
    assert sum("gemm_wgmma_dec_kernel" in e for e in entries) == 6, entries
    assert sum("gemm_wgmma_wide_kernel" in e for e in entries) == 2, entries
    # C7515 / C7518: MMAs serialized (an accumulator touched while MMAs may be in flight, or under a
    # per-thread branch: session 36's stream-K epilogue met both); C7517: a wait ptxas inserted
    # itself (before an accumulator use it could not prove safe)
    notes = [line for line in log.splitlines() if re.search(r"C751[578]", line)]
    assert not notes, notes
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == len(entries) and all(s == ("0", "0") for s in spills), spills


def _ptxas_blocks(log: str) -> list[tuple[str, str]]:
    """(mangled entry name, its part of the ptxas -v log) per compiled kernel."""
    parts = re.split(r"Compiling entry function '(\S+)'", log)
    return list(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA_HOME, no nvcc on PATH)")
def test_decode_stream_kernel_compiles_without_spills(tmp_path: Path) -> None:
    """Every M <= 8 instantiation of gemm_stream_kernel (MT = 1: bf16 / fp16, the (U = 4, 2 CTAs
    an SM) and wave-rule (U = 2, 3 CTAs an SM) configurations, with and without per-tile bounds
    checks, weight blocks 16 / 32, x_hat in rows or in fragment order) keeps its two accumulator
    sets and both weight stages in registers: a spill would put local-memory traffic into the loop
    that decode time is made of."""
    src = Path(build.CSRC) / "gemm.cu"
    cmd = [NVCC, *build.nvcc_flags(), "-cubin", "-o", str(tmp_path / "gemm.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    mt1 = [(name, block) for name, block in _ptxas_blocks(log)
           if re.search(r"gemm_stream_kernelI(?:13__nv_bfloat16|6__half)Li1E", name)]
    assert len(mt1) == 32, [name for name, _ in mt1]
    for name, block in mt1:
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        assert spill is not None and spill.groups() == ("0", "0"), (name, block)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA_HOME, no nvcc on PATH)")
def test_register_source_wgmma_kernel_compiles_without_serialization(tmp_path: Path) -> None:
    """Every instantiation of gemm_wgmma_rs_kernel (16-bit type x 16 / 32 / 64 token columns x weight
    block x split-K) keeps its MMAs asynchronous: no C7515 (an accumulator written while MMAs are in
    flight) and no C7518 (a tile's fence / MMAs / commit / wait skipped by a data-dependent branch,
    as the first version skipped tiles past a CTA's share of K); at 16 token columns nothing spills."""
    src = Path(build.CSRC) / "gemm_wgmma_rs.cu"
    cmd = [NVCC, *build.nvcc_flags(), "-cubin", "-o", str(tmp_path / "gemm_wgmma_rs.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    blocks = [(name, block) for name, block in _ptxas_blocks(log) if "gemm_wgmma_rs_kernel" in name]
    assert len(blocks) == 24, [name for name, _ in blocks]
    notes = [line for line in log.splitlines() if "C7515" in line or "C7518" in line]
    assert not notes, notes
    for name, block in blocks:
        if re.search(r"gemm_wgmma_rs_kernelI(?:13__nv_bfloat16|6__half)Li16E", name):
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
            assert spill is not None and spill.groups() == ("0", "0"), (name, block)
