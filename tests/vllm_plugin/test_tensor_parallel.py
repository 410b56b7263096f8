"""Tensor parallelism for real: 2 processes, vLLM's gloo TP group, real vLLM TP layers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[2]  # tp_worker runs as a module of the tests package


def run_tp(world: int = 2, extra_env: dict[str, str] | None = None, timeout: float = 600) -> None:
    from .vllm_env import free_port

    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.vllm_plugin.tp_worker", str(r), str(world), str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        for r in range(world)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"rank {r}: OK" in out, f"rank {r} failed:\n{out[-4000:]}"


def test_tp2_payload_is_slice_of_tp1_payload() -> None:
    run_tp(2)
