"""tools/gpu/profile_prefill.py's summary of a PyTorch profile, on a real CPU profile (the GPU
parts of a summary are empty without CUDA events; the device run fills them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu" / "profile_prefill.py"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("profile_prefill", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_import_leaves_the_environment_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    _tool()
    import os

    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # only main() sets it


def test_summarize_cpu_profile() -> None:
    a = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            a = torch.mm(a, a).tanh()
    s = _tool().summarize(prof, 0.0123)
    assert s["wall_ms"] == 12.3
    assert s["gpu_busy_ms"] == 0 and s["gpu_span_ms"] is None and s["gaps_over_1ms"] == []
    count, self_ms, total_ms = s["top_host_ops_count_selfms_totalms"]["aten::mm"]
    assert count == 3 and 0 < self_ms <= total_ms
    assert s["sharq_ops_count_selfms_totalms_us_per_call"] == {}
