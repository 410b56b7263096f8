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


def test_per_step_from_two_profiles() -> None:
    tool = _tool()
    gemm = "void sharq::gemm_stream_kernel<__nv_bfloat16, 1, 4, 2, true, 64>"
    prep = "void sharq::(anonymous namespace)::prep_kernel<__nv_bfloat16, 1, false, 2>"
    attn = "flash_fwd_splitkv_kernel"
    short = {gemm: [64, 0.5], prep: [64, 0.25], attn: [32, 0.4]}
    long = {gemm: [64 + 4 * 128, 0.5 + 4 * 1.6], prep: [64 + 4 * 128, 0.25 + 4 * 0.4], attn: [32 + 4 * 32, 0.4 + 4 * 0.2],
            "triton_red_fused_add_mean_pow_rsqrt_0": [4 * 1, 4 * 0.003]}
    d = tool.per_step(short, long, 4)
    assert d["top_kernels_launches_us"][gemm] == [128, 1600.0]
    assert d["top_kernels_launches_us"][attn] == [32, 200.0]
    # the buckets of benchmarks/serving/trace_summary.py, largest first
    assert d["groups_launches_us"] == {"sharq gemm": [128, 1600.0], "sharq preparation": [128, 400.0],
                                       "attention": [32, 200.0], "triton: other": [1, 3.0]}
    assert list(d["groups_launches_us"]) == ["sharq gemm", "sharq preparation", "attention", "triton: other"]
    assert d["kernel_us"] == 2203.0


def test_idle_gaps() -> None:
    # [0, 10] and [5, 20] overlap, then 1.5 ms idle before [1520, 1530], then 0.5 ms before [2030, 2040]
    iv = [(0.0, 10.0), (5.0, 20.0), (1520.0, 1530.0), (2030.0, 2040.0)]
    assert _tool().idle_gaps_ms(iv) == [1.5]
    assert _tool().idle_gaps_ms(iv, over_us=400.0) == [1.5, 0.5]
    assert _tool().idle_gaps_ms([]) == []
