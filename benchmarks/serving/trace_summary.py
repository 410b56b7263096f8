"""Where a serving step's GPU time goes: a summary of one PyTorch profiler trace (the Chrome
trace JSON that vLLM's ``profiler_config={"profiler": "torch", ...}`` writes per worker).

``offline.py --profile-batches`` records a few decode steps of each method with vLLM's own
profiler and stores this summary in the result JSON, so two methods' steps can be compared
kernel by kernel on the same card (which kernels run, how long each takes, how much of the
step the GPU is idle). Only the summary is kept; the traces themselves stay on the machine.

Steps are counted from vLLM's CPU annotation of each engine step (``execute_context_<n>(<tokens>)_
generation_<n>(<tokens>)`` in vLLM 0.26); a trace without it is summarized per trace instead
(``steps`` = 0, totals).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

STEP_ANNOTATION = re.compile(r"^execute_context_\d+\(\d+\)_generation_\d+\(\d+\)$")

# Buckets a reader can compare across methods; the first pattern that matches a kernel's name
# wins (names are demangled C++ or Triton names, so the patterns look for stable substrings).
BUCKETS: tuple[tuple[str, str], ...] = (
    ("sharq preparation", r"sharq.*prep|prep_kernel"),
    ("sharq gemm", r"sharq.*(gemm|dequant)"),
    ("fp8 gemm (cutlass)", r"cutlass_3x_gemm.*fp8|cutlass_scaled_mm_sm90|fp8.*gemm"),
    ("attention", r"flash|attn|attention|fmha|paged|reshape_and_cache|cascade"),
    ("bf16 gemm (cublas)", r"nvjet|sm90_xmma|cublas|gemv|gemmSN|Kernel2"),
    # Inductor's Triton kernels: RMSNorm (+ residual add), SiLU * mul, rotary, and for FP8 the
    # per-token quantization Inductor fuses into them (the fused op names are in the kernel name)
    ("triton: fp8 quant (+norm / act)", r"^triton_.*(scaled_fp8_quant|cutlass_scaled_mm|reciprocal.*clamp|clamp.*reciprocal)"),
    ("triton: rms norm", r"^triton_.*rms_norm"),
    ("triton: other", r"^triton_"),
    ("rms norm (cuda)", r"rms_?norm|layernorm|layer_norm"),
    ("activation (cuda)", r"silu|act_and_mul|gelu"),
    ("sampling / logits", r"sampl|argmax|ArgMax|topk|top_k|softmax|logit|gather|scatter|index"),
    ("copies / fills", r"copy|Memcpy|Memset|fill|memset"),
)


def bucket_of(name: str) -> str:
    for bucket, pattern in BUCKETS:
        if re.search(pattern, name, re.IGNORECASE):
            return bucket
    return "other"


def short_name(name: str, width: int = 140) -> str:
    """A kernel name without template argument lists beyond the first level, cut to ``width``."""
    out, depth = [], 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<")
            continue
        # the arrow of "Memcpy DtoH (Device -> Pinned)" and a stray ">" close no template
        if ch == ">" and depth > 0 and name[i - 1 : i] != "-":
            depth -= 1
            if depth == 0:
                out.append(">")
            continue
        if depth <= 1:
            out.append(ch)
    s = re.sub(r"\s+", " ", "".join(out)).strip()
    return s if len(s) <= width else s[: width - 3] + "..."


def load_trace(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)  # type: ignore[no-any-return]


def union_us(intervals: list[tuple[float, float]]) -> float:
    """The union of kernel intervals (concurrent kernels count once)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def summarize(trace: dict[str, Any], top: int = 30) -> dict[str, Any]:
    """Per-step GPU kernel time by kernel and by bucket, GPU busy time and the step span.

    ``span_us_per_step``: first kernel start to last kernel end over the profiled steps, divided
    by the steps (CPU work between steps the GPU waits for is inside it); ``busy_us_per_step``:
    the union of kernel intervals (concurrent kernels count once); ``kernel_us_per_step``: the
    plain sum of kernel durations (> busy where kernels overlap, e.g. programmatic dependent
    launch)."""
    events = trace.get("traceEvents", [])
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    steps = sum(1 for e in events if e.get("ph") == "X" and e.get("cat") == "user_annotation"
                and STEP_ANNOTATION.match(str(e.get("name", ""))))
    n = max(steps, 1)
    if not kernels:
        return {"steps": steps, "kernels": 0, "error": "no kernel events in the trace"}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e["name"], []).append(float(e.get("dur", 0.0)))
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in kernels]
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    busy = union_us(intervals)
    total = sum(sum(v) for v in by_name.values())
    bucket = {name: bucket_of(name) for name in by_name}
    buckets: dict[str, float] = {}
    for name, durs in by_name.items():
        buckets[bucket[name]] = buckets.get(bucket[name], 0.0) + sum(durs)
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    return {
        "steps": steps,
        "span_us_per_step": round(span / n, 1),
        "busy_us_per_step": round(busy / n, 1),
        "kernel_us_per_step": round(total / n, 1),
        "idle_share": round(1.0 - busy / span, 4) if span > 0 else None,
        "launches_per_step": round(len(kernels) / n, 1),
        "buckets_us_per_step": {k: round(v / n, 1) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": short_name(name), "bucket": bucket[name], "calls_per_step": round(len(durs) / n, 2),
             "us_per_step": round(sum(durs) / n, 2), "median_us": round(sorted(durs)[len(durs) // 2], 2)}
            for name, durs in rows[:top]
        ],
    }


def newest_worker_trace(folder: Path, since: float) -> Path | None:
    """The trace written after ``since`` with the most bytes (the GPU worker's; a front-end
    process writes a CPU-only trace beside it)."""
    cands = [p for p in folder.rglob("*.json*") if p.is_file() and p.stat().st_mtime >= since
             and (p.name.endswith(".json") or p.name.endswith(".json.gz"))]
    return max(cands, key=lambda p: p.stat().st_size, default=None)
