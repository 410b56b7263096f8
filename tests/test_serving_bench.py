# ruff: noqa: UP031  (the log lines are rendered with vLLM's own %-format strings on purpose)
"""CPU tests of the serving-benchmark plumbing (benchmarks/serving): vLLM log parsing against the
exact vLLM 0.26 format strings, bench-serve JSON summarizing, result merging, report layout,
shape folders, profiler-trace summaries. No vLLM, no GPU."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from benchmarks.serving import common, report, shapes, trace_summary

SERVING = Path(common.__file__).resolve().parent

# Lines rendered from vLLM 0.26.0's own format strings (files named in common.LOG_PATTERNS),
# with the prefixes vLLM's multiprocess logging adds and an ANSI colour code.
LOG_026 = "\n".join([
    "(EngineCore pid=812) INFO 11-27 02:01:13 [gpu_model_runner.py:5348] Model loading took %s GiB memory and %.6f seconds"
    % ("8.49", 21.734512),
    "(EngineCore pid=812) INFO 11-27 02:01:40 [backends.py:100] some other line",
    "\x1b[1;36m(EngineCore pid=812)\x1b[0;0m INFO 11-27 02:01:52 [gpu_worker.py:561] Available KV cache memory: %s GiB"
    % "57.44",
    "(EngineCore pid=812) INFO 11-27 02:01:52 [kv_cache_utils.py:2177] GPU KV cache size: %s tokens" % f"{470_544:,}",
    "(EngineCore pid=812) INFO 11-27 02:01:52 [kv_cache_utils.py:2179] Maximum concurrency for %s tokens per request: %.2fx"
    % (f"{4096:,}", 114.88),
    "(EngineCore pid=812) INFO 11-27 02:02:10 [gpu_model_runner.py:6845] Graph capturing finished in %.0f secs, took %.2f GiB"
    % (14.2, 0.53),
    "(EngineCore pid=812) INFO 11-27 02:02:11 [core.py:331] init engine (profile, create kv cache, warmup model) took %.2f s (compilation: %.2f s)"
    % (58.31, 31.02),
    "(EngineCore pid=812) INFO 11-27 02:01:14 [linear_method.py:99] sharq: model.layers.0.self_attn.qkv_proj -> kernel sharq_mma",
])

LOG_TP2 = "\n".join([
    "(Worker_TP0 pid=1) INFO [gpu_model_runner.py:5348] Model loading took 4.26 GiB memory and 10.5 seconds",
    "(Worker_TP1 pid=2) INFO [gpu_model_runner.py:5348] Model loading took 4.31 GiB memory and 10.9 seconds",
    "(Worker_TP0 pid=1) INFO [gpu_worker.py:561] Available KV cache memory: 61.2 GiB",
    "(Worker_TP1 pid=2) INFO [gpu_worker.py:561] Available KV cache memory: 61.1 GiB",
    "(EngineCore pid=3) INFO [kv_cache_utils.py:2177] GPU KV cache size: 1,000,448 tokens",
])


def test_parse_vllm_026_lines():
    p = common.parse_vllm_log(LOG_026)
    assert p["weight_gib"] == 8.49
    assert p["weight_load_s"] == pytest.approx(21.734512)
    assert p["kv_gib"] == 57.44
    assert p["kv_tokens"] == 470544
    assert p["max_concurrency"] == 114.88 and p["max_concurrency_at_len"] == 4096
    assert p["cudagraph_s"] == 14 and p["cudagraph_gib"] == 0.53
    assert p["init_engine_s"] == 58.31 and p["compile_s"] == 31.02
    assert p["sharq_log_lines"] == 1
    assert len(p["raw"]) == 7 and not any("\x1b" in r for r in p["raw"])


def test_parse_new_runner_and_cpu_variants():
    p = common.parse_vllm_log(
        "INFO [model_runner.py:306] Model loading took 43.12 GiB and 95.000000 seconds\n"
        "INFO [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 512 tokens per request: 2048.00x\n"
        "INFO [core.py:348] init engine (profile, create kv cache, warmup model) took 12.50 s\n")
    assert p["weight_gib"] == 43.12
    assert p["kv_tokens"] == 1048576 and p["max_concurrency"] == 2048.0
    assert p["init_engine_s"] == 12.5 and "compile_s" not in p
    assert len(p["raw"]) == 3  # the combined KV line is kept once


def test_parse_tp_takes_per_rank_max():
    p = common.parse_vllm_log(LOG_TP2)
    assert p["weight_gib"] == 4.31 and p["weight_gib_all"] == [4.26, 4.31]
    assert p["kv_gib"] == 61.2 and p["kv_tokens"] == 1000448


def test_parse_empty_log():
    p = common.parse_vllm_log("Traceback (most recent call last):\nRuntimeError: CUDA out of memory")
    assert "weight_gib" not in p and p["raw"] == []
    assert "out of memory" in common.error_summary("x\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory")


def test_card_slug():
    assert common.card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert common.card_slug("NVIDIA H200") == "h200"
    assert common.card_slug("cpu") == "cpu"


def test_summarize_bench():
    from benchmarks.serving import online

    raw = {"completed": 32, "failed": 0, "duration": 10.0, "request_throughput": 3.2, "output_throughput": 819.2,
           "total_token_throughput": 1228.8, "median_ttft_ms": 20.0, "p50_ttft_ms": 20.0, "p99_ttft_ms": 50.0,
           "mean_tpot_ms": 5.0, "p50_tpot_ms": 4.9, "p99_tpot_ms": 7.0, "median_itl_ms": 4.8,
           "ttfts": [0.02] * 32, "itls": [[0.005] * 255] * 32, "errors": [""] * 32}
    s = online.summarize_bench(raw)
    assert s["p99_tpot_ms"] == 7.0 and s["request_throughput"] == 3.2
    assert s["p50_itl_ms"] == 4.8  # filled from median
    assert "ttfts" not in s and "errors_sample" not in s


def test_online_levels():
    from benchmarks.serving import online

    a = online.parse_args(["--concurrency", "1,8,128", "--request-rates", "2.5"])
    lv = online._levels(a)
    assert [x["label"] for x in lv] == ["c1", "c8", "c128", "r2.5"]
    assert [x["num_prompts"] for x in lv] == [8, 32, 512, 50]


def test_save_results_merges(tmp_path):
    out = tmp_path / "serving-h100.json"
    hdr = {"card": "NVIDIA H100 80GB HBM3", "card_slug": "h100"}
    common.save_results(out, "Llama-3.1-8B", {"model": "Llama-3.1-8B", "tp": 1, "vllm": "0.26.0", "torch": "2.11.0",
                                              "methods": {"fp8": {"decode_tok_s": {"1": 230.0}}}}, hdr)
    common.save_results(out, "Llama-3.1-8B", {"methods": {"fp8": {"decode_tok_s": {"8": 1700.0}, "weight_gib": 8.5},
                                                          "sharq": {"decode_tok_s": {"1": 400.0}}}}, hdr)
    common.save_results(out, "Llama-3.1-70B", {"model": "Llama-3.1-70B", "tp": 1,
                                               "methods": {"sharq": {"kv_tokens": 100000}}}, hdr)
    common.save_results(out, "Llama-3.1-8B", {"methods": {"sharq": {"online": {"levels": {"c1": {"request_throughput": 1}}}}}}, hdr)
    d = json.loads(out.read_text())
    assert d["card"] == "NVIDIA H100 80GB HBM3" and d["vllm"] == "0.26.0" and d["torch"] == "2.11.0"
    assert d["model"] == "Llama-3.1-8B"
    assert d["methods"]["fp8"]["decode_tok_s"] == {"1": 230.0, "8": 1700.0}
    assert d["methods"]["sharq"]["decode_tok_s"] == {"1": 400.0}
    assert d["methods"]["sharq"]["online"]["levels"]["c1"]["request_throughput"] == 1
    assert d["models"]["Llama-3.1-70B"]["methods"]["sharq"]["kv_tokens"] == 100000
    assert common.run_key("Llama-3.1-8B", 2) == "Llama-3.1-8B@tp2"
    # an online run replaces the method's online result whole: levels it skipped are not an older run's
    common.save_results(out, "Llama-3.1-8B", {"methods": {"sharq": {"online": {
        "levels": {"c1": {"request_throughput": 2}, "c8": {"request_throughput": 7}}}}}}, hdr)
    common.save_results(out, "Llama-3.1-8B", {"methods": {"sharq": {"online": {
        "levels": {"c1": {"request_throughput": 3}}, "skipped": {"c8": "time"}}}}}, hdr)
    online = json.loads(out.read_text())["methods"]["sharq"]["online"]
    assert online == {"levels": {"c1": {"request_throughput": 3}}, "skipped": {"c8": "time"}}


def test_report_fake(tmp_path):
    data = report.fake_data()
    md = report.markdown(data)
    assert "FAKE NUMBERS" in md
    assert ">= 1.4x: PASS" in md and "<= 0.6x: FAIL" in md
    assert "KV cache SharQ / FP8" in md
    assert report._check("decode_1", 1.2, report.TARGETS["h100"]) == ">= 1.4x: FAIL"
    # an H200 run is checked against issue 15's targets (batch 32 >= 1.0x, no weight-memory target)
    issue, h200 = report.targets_for("h200")
    assert issue == "issue 15"
    assert report._check("decode_32", 0.99, h200) == ">= 1x: FAIL"
    assert report._check("decode_128", 0.66, h200) == ">= 0.65x: PASS"
    md200 = report.markdown({**data, "card_slug": "h200"})
    assert "<= 0.6x" not in md200 and ">= 0.65x" in md200


def test_configs_are_real_architectures():
    c8 = json.loads((SERVING / "configs/Llama-3.1-8B/config.json").read_text())
    assert (c8["hidden_size"], c8["intermediate_size"], c8["num_hidden_layers"], c8["num_key_value_heads"],
            c8["vocab_size"]) == (4096, 14336, 32, 8, 128256)
    c70 = json.loads((SERVING / "configs/Llama-3.1-70B/config.json").read_text())
    assert (c70["hidden_size"], c70["intermediate_size"], c70["num_hidden_layers"], c70["num_attention_heads"]) == (8192, 28672, 80, 64)
    cq = json.loads((SERVING / "configs/Qwen2.5-7B/config.json").read_text())
    assert (cq["hidden_size"], cq["intermediate_size"], cq["num_hidden_layers"], cq["num_key_value_heads"],
            cq["vocab_size"]) == (3584, 18944, 28, 4, 152064)
    assert set(shapes.MODELS) <= {p.name for p in (SERVING / "configs").iterdir()}


@pytest.mark.skipif(not (shapes.PACK / "tokenizers").exists(), reason="tokenizer pack not built (shapes.py fetch)")
def test_materialize(tmp_path):
    out = shapes.materialize(["llama-3.1-8b", "Qwen2.5-7B"], tmp_path, quiet=True)
    for folder in out.values():
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            assert (folder / f).stat().st_size > 0
    again = shapes.materialize(["Llama-3.1-8B"], tmp_path, quiet=True)  # stamp: no rebuild
    assert again["Llama-3.1-8B"] == out["Llama-3.1-8B"]


# Kernel names as they appear in an H200 trace of vLLM 0.26 decode steps (SharQ, FP8 and BF16 runs)
K_PREP = "void sharq::(anonymous namespace)::prep_kernel<__nv_bfloat16, 1, false>(__nv_bfloat16 const*, int)"
K_GEMM = "void sharq::(anonymous namespace)::gemm_stream_kernel<__nv_bfloat16, 1, 4, 2, true>(sharq::GemmArgs)"
K_FP8 = "void cutlass::device_kernel<vllm::cutlass_3x_gemm_sm90_fp8::GemmKernel>(vllm::Params)"
K_QUANT = "triton_red_fused__to_copy_abs_clamp_cutlass_scaled_mm_div_fused_add_rms_norm_max_mul_reciprocal_unsqueeze_3"
K_RMS = "triton_red_fused_fused_add_rms_norm_linear_2"
K_FLASH = "void cutlass::device_kernel<flash::enable_sm90_or_later >(flash::Params)"
K_NVJET = "nvjet_sm90_tst_256x8_64x6_2x1_v_bz_TNT"
K_MEMCPY = "Memcpy DtoH (Device -> Pinned)"
K_MEMSET = "Memset (Device)"
EXPECTED_BUCKET = {
    K_PREP: "sharq preparation", K_GEMM: "sharq gemm", K_FP8: "fp8 gemm (cutlass)",
    K_QUANT: "triton: fp8 quant (+norm / act)", K_RMS: "triton: rms norm", K_FLASH: "attention",
    K_NVJET: "bf16 gemm (cublas)", K_MEMCPY: "copies / fills", K_MEMSET: "copies / fills",
}
GEMM_US = (20.0, 26.0, 22.0)  # the SharQ GEMM's duration in steps 0, 1, 2


def _x(name: str, cat: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 7, "ts": ts, "dur": dur}


def _fake_trace(annotate: bool = True) -> dict:
    """Three decode steps 100 us apart, kernel times relative to the step's base (us):
    prep [0,4) and gemm [3,3+g) overlap by 1 us (programmatic dependent launch), quant [30,33),
    fp8 [34,44), rms [45,47), flash [48,56), nvjet [57,63); a memcpy [70,71) in step 0 only, a
    memset [70,72) in step 1 only; the GPU is idle from the step's last kernel to the next step."""
    ev: list[dict] = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python"}}]
    for k, g in enumerate(GEMM_US):
        base = 1000.0 + 100 * k
        step = "execute_context_0(0)_generation_%d(%d)" % (32, 32)
        if annotate:
            ev.append(_x(step, "user_annotation", 5000.0 + 300 * k, 250.0))
        # same name on other timelines: neither is a step, and neither is a kernel
        ev.append(_x(step, "cpu_op", 5001.0 + 300 * k, 240.0))
        ev.append(_x(step, "gpu_user_annotation", base - 50, 200.0))
        ev.append(_x("cudaLaunchKernel", "cuda_runtime", 5010.0 + 300 * k, 500.0))
        ev.append({"ph": "s", "cat": "ac2g", "name": "ac2g", "id": k, "pid": 1, "tid": 7, "ts": 5010.0 + 300 * k})
        for name, t0, dur in ((K_PREP, 0, 4), (K_GEMM, 3, g), (K_QUANT, 30, 3), (K_FP8, 34, 10),
                              (K_RMS, 45, 2), (K_FLASH, 48, 8), (K_NVJET, 57, 6)):
            ev.append(_x(name, "kernel", base + t0, float(dur)))
        if k == 0:
            ev.append(_x(K_MEMCPY, "gpu_memcpy", base + 70, 1.0))
        if k == 1:
            ev.append(_x(K_MEMSET, "gpu_memset", base + 70, 2.0))
    # annotations that are not a vLLM 0.26 engine step
    ev.append(_x("execute_context_0(0)_generation_32(32)_x", "user_annotation", 6000.0, 10.0))
    ev.append(_x("ProfilerStep#3", "user_annotation", 6100.0, 10.0))
    ev.append(_x("gpu_model_runner: sample", "user_annotation", 6200.0, 10.0))
    return {"schemaVersion": 1, "traceEvents": ev}


def test_trace_buckets_of_real_kernel_names():
    for name, bucket in EXPECTED_BUCKET.items():
        assert trace_summary.bucket_of(name) == bucket, name
    assert trace_summary.bucket_of("some_unknown_thing") == "other"


def test_trace_summarize_steps():
    s = trace_summary.summarize(_fake_trace())
    assert s["steps"] == 3  # the three user_annotation steps only
    # kernels: 7 per step + memcpy + memset = 23; kernel sum 4*3 + (20+26+22) + 3*3 + 10*3 + 2*3 + 8*3
    # + 6*3 + 1 + 2 = 170; busy (union): 170 - 3 x 1 us of prep/gemm overlap = 167; span: first
    # kernel start 1000 to last end 1263 (step 2's nvjet) = 263
    assert s["span_us_per_step"] == round(263 / 3, 1) == 87.7
    assert s["busy_us_per_step"] == round(167 / 3, 1) == 55.7
    assert s["kernel_us_per_step"] == round(170 / 3, 1) == 56.7
    assert s["idle_share"] == round(1 - 167 / 263, 4) == 0.365
    assert s["launches_per_step"] == round(23 / 3, 1) == 7.7
    assert s["buckets_us_per_step"] == {
        "sharq gemm": 22.7, "fp8 gemm (cutlass)": 10.0, "attention": 8.0, "bf16 gemm (cublas)": 6.0,
        "sharq preparation": 4.0, "triton: fp8 quant (+norm / act)": 3.0, "triton: rms norm": 2.0,
        "copies / fills": 1.0,
    }
    assert list(s["buckets_us_per_step"]) == sorted(s["buckets_us_per_step"], key=lambda b: -s["buckets_us_per_step"][b])
    top = s["top_kernels"]
    assert [t["name"] for t in top] == [trace_summary.short_name(k) for k in (
        K_GEMM, K_FP8, K_FLASH, K_NVJET, K_PREP, K_QUANT, K_RMS, K_MEMSET, K_MEMCPY)]
    by = {t["name"]: t for t in top}
    assert by[K_MEMCPY]["name"] == K_MEMCPY  # the "->" survives short_name
    for name, bucket in EXPECTED_BUCKET.items():
        assert by[trace_summary.short_name(name)]["bucket"] == bucket
    g = by[trace_summary.short_name(K_GEMM)]
    assert g["calls_per_step"] == 1.0 and g["us_per_step"] == round(68 / 3, 2) == 22.67
    assert g["median_us"] == 22.0  # sorted (20, 22, 26): the middle, not the mean or the first
    assert by[K_MEMCPY]["calls_per_step"] == 0.33 and by[K_MEMSET]["us_per_step"] == 0.67
    assert by[trace_summary.short_name(K_FP8)]["median_us"] == 10.0
    assert len(trace_summary.summarize(_fake_trace(), top=3)["top_kernels"]) == 3


def test_trace_summarize_without_steps_or_kernels():
    s = trace_summary.summarize(_fake_trace(annotate=False))
    assert s["steps"] == 0  # cpu_op / gpu_user_annotation copies of the step name do not count
    assert (s["span_us_per_step"], s["busy_us_per_step"], s["kernel_us_per_step"]) == (263.0, 167.0, 170.0)
    assert s["launches_per_step"] == 23.0
    assert s["top_kernels"][0]["calls_per_step"] == 3.0 and s["top_kernels"][0]["us_per_step"] == 68.0
    no_kernels = {"traceEvents": [e for e in _fake_trace()["traceEvents"]
                                  if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset")]}
    s = trace_summary.summarize(no_kernels)
    assert s["steps"] == 3 and s["kernels"] == 0 and "no kernel" in s["error"]
    assert "span_us_per_step" not in s
    assert trace_summary.summarize({}) == {"steps": 0, "kernels": 0, "error": "no kernel events in the trace"}


def test_trace_short_name():
    sn = trace_summary.short_name
    assert sn("void f<a<b, c>, d<e<f>>>(int)") == "void f<a, d>(int)"
    assert sn("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<cute::tuple<int>>>>"
              "(flash::Params)") == "void cutlass::device_kernel<flash::enable_sm90_or_later>(flash::Params)"
    assert sn(K_PREP) == K_PREP and sn(K_NVJET) == K_NVJET  # one level of template arguments is kept
    assert sn("void  f<\n int>( )") == "void f< int>( )"
    assert sn(K_MEMCPY) == K_MEMCPY and sn("a -> b<c<d>> -> e") == "a -> b<c> -> e"
    assert sn("x" * 20, width=20) == "x" * 20
    cut = sn("k<" + "a<b>, " * 50 + ">" + "y" * 200)
    assert len(cut) == 140 and cut.endswith("...") and cut.startswith("k<a, a, ")
    assert sn("z" * 30, width=10) == "z" * 7 + "..."


def test_trace_load_and_newest(tmp_path):
    trace = _fake_trace()
    plain, packed = tmp_path / "w0.pt.trace.json", tmp_path / "w1.pt.trace.json.gz"
    plain.write_text(json.dumps(trace))
    packed.write_bytes(gzip.compress(json.dumps(trace).encode()))
    assert trace_summary.load_trace(plain) == trace == trace_summary.load_trace(packed)

    folder = tmp_path / "profile"
    (folder / "sub").mkdir(parents=True)
    since = 1_700_000_000.0
    files = {  # name: (bytes, mtime)
        "old-big.pt.trace.json": (5000, since - 10),      # bigger, but from an earlier profile
        "front.pt.trace.json": (100, since + 1),          # the front end's CPU-only trace
        "sub/worker.pt.trace.json.gz": (900, since + 2),  # the GPU worker's trace
        "big.json.tmp": (8000, since + 3),                # not a trace file
        "big.txt": (9000, since + 3),
    }
    for name, (size, mtime) in files.items():
        p = folder / name
        p.write_bytes(b"x" * size)
        os.utime(p, (mtime, mtime))
    assert trace_summary.newest_worker_trace(folder, since) == folder / "sub/worker.pt.trace.json.gz"
    assert trace_summary.newest_worker_trace(folder, since - 20) == folder / "old-big.pt.trace.json"
    assert trace_summary.newest_worker_trace(folder, since + 5) is None


def test_offline_profile_args():
    from benchmarks.serving import offline

    a = offline.parse_args(["--profile-batches", "1,32", "--profile-steps", "8"])
    assert a.profile_batches == "1,32" and a.profile_steps == 8
    d = offline.parse_args([])
    assert d.profile_batches == "" and d.profile_steps == 16
    assert offline.PROFILE_SKIP_STEPS == 3


def test_report_profile_table():
    """The report renders each method's profiled decode steps by bucket, one column per method and
    batch, with '-' where a method has no such bucket; a run without profiles gives no table."""
    fp8 = trace_summary.summarize(_fake_trace())
    fp8["buckets_us_per_step"] = {"fp8 gemm (cutlass)": 30.0, "attention": 9.25}
    sharq = dict(fp8, buckets_us_per_step={"sharq gemm": 12.5, "attention": 8.0}, busy_us_per_step=20.0)
    run = {"methods": {"sharq": {"profile": {"1": sharq}}, "fp8": {"profile": {"1": fp8, "32": {"error": "x"}}}}}
    lines = report.profile_table(run)
    assert lines[0] == "| us per decode step | FP8 b1 | SharQ b1 |"
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:]}
    assert rows["fp8 gemm (cutlass)"] == "| fp8 gemm (cutlass) | 30.0 | - |"
    assert rows["attention"] == "| attention | 9.2 | 8.0 |" or rows["attention"] == "| attention | 9.3 | 8.0 |"
    assert rows["sharq gemm"] == "| sharq gemm | - | 12.5 |"
    assert rows["**GPU busy (overlaps once)**"] == f"| **GPU busy (overlaps once)** | {report._fmt(fp8['busy_us_per_step'], 1)} | 20.0 |"
    assert rows["profiled steps"] == f"| profiled steps | {fp8['steps']} | {sharq['steps']} |"
    assert report.profile_table({"methods": {"fp8": {"decode_tok_s": {"1": 1.0}}}}) == []


def test_report_host_load():
    """offline.py records the host's load average after each phase; the report gives each method's
    range and flags a method measured with the load above half the CPUs."""
    from benchmarks.serving import offline

    now = offline._host_load()
    assert now is None or (isinstance(now, float) and now >= 0)
    ms = {
        "fp8": {"host_cpus": 32, "decode_detail": {"1": {"loadavg_1m": 2.5}, "8": {"loadavg_1m": 3.0}},
                "prefill_detail": {"loadavg_1m": 2.0}},
        "sharq": {"host_cpus": 32, "decode_detail": {"1": {"loadavg_1m": 17.5}, "8": {"loadavg_1m": 4.0}}},
        "bf16": {"decode_detail": {"1": {"wall_s": 1.0}}},  # an older run: nothing recorded
    }
    lines = report.host_load_lines(ms)
    assert lines[0] == "\nHost load (1-minute average after each phase): FP8 2.0-3.0, SharQ 4.0-17.5 on 32 CPUs."
    assert len(lines) == 2 and lines[1].startswith("**CPU contention**: SharQ measured")
    ms["sharq"]["decode_detail"]["1"]["loadavg_1m"] = 16.0  # exactly half: not flagged
    assert len(report.host_load_lines(ms)) == 1
    assert report.host_load_lines({"bf16": ms["bf16"]}) == []


def test_report_does_not_judge_contended_phases():
    """A target row measured (for SharQ or FP8) with the host's load above half its CPUs says so
    instead of PASS / FAIL; the other rows keep their verdicts."""
    def method(tok_s: dict[str, float], loads: dict[str, float]) -> dict:
        return {"host_cpus": 32, "decode_tok_s": tok_s, "prefill_tok_s": 100.0,
                "decode_detail": {b: {"loadavg_1m": v} for b, v in loads.items()},
                "prefill_detail": {"loadavg_1m": 20.0}}

    run = {"methods": {"fp8": method({"1": 200.0, "8": 2000.0}, {"1": 23.0, "8": 2.0}),
                       "sharq": method({"1": 350.0, "8": 2100.0}, {"1": 3.0, "8": 3.0})}}
    table = "\n".join(report.offline_table(run, with_targets=True, targets=report.TARGETS["h200"]))
    row = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "not judged: CPU contention" in row["decode tok/s, batch 1"]  # FP8 at load 23 on 32 CPUs
    assert "FAIL" in row["decode tok/s, batch 8"]  # 1.05x against >= 1.3x, both clean
    assert "not judged: CPU contention" in row["prefill tok/s (64x2048)"]


def test_report_shows_decode_steps_without_judging_them():
    """offline.py's decode-step rate (the batch's prefill left out) gets its own row and ratio
    next to the end-to-end decode row the targets judge; runs without it show no such row."""
    run = {"methods": {"fp8": {"decode_tok_s": {"1": 200.0}, "decode_step_tok_s": {"1": 210.0}},
                       "sharq": {"decode_tok_s": {"1": 300.0}, "decode_step_tok_s": {"1": 336.0}}}}
    table = "\n".join(report.offline_table(run, with_targets=True, targets=report.TARGETS["h200"]))
    row = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table.splitlines()
           if ln.startswith("| ")}
    assert row["decode steps tok/s, batch 1 (prefill left out)"] == ["210", "336", "1.60x", ""]
    assert row["decode tok/s, batch 1"][2:] == ["1.50x", ">= 1.4x: PASS"]
    del run["methods"]["fp8"]["decode_step_tok_s"], run["methods"]["sharq"]["decode_step_tok_s"]
    table = "\n".join(report.offline_table(run, with_targets=True, targets=report.TARGETS["h200"]))
    assert "decode steps" not in table


def test_decode_summary_takes_medians_of_the_repeats():
    from benchmarks.serving import offline

    # (1-token wall, its tokens, full wall, generated tokens, prompt tokens); batch 8, 256 out
    runs = [(0.05, 8, 0.85, 2048, 1024), (0.04, 8, 1.04, 2048, 1024), (0.06, 8, 0.80, 2048, 1024)]
    rate, detail, step = offline._decode_summary(runs, 256)
    assert rate == round(2048 / 0.85, 2)  # the median end-to-end rate
    assert step == round(2040 / 0.80, 2)  # steps: 2040/0.80, 2040/1.00, 2040/0.74 -> median 2040/0.80
    assert detail["repeats"] == 3 and detail["wall_s"] == 0.85 and detail["prefill_wall_s"] == 0.05
    assert detail["decode_tok_s_runs"] == [round(2048 / w, 2) for w in (0.85, 1.04, 0.80)]
    assert detail["ms_per_decode_step"] == round(1000 * 0.80 / 255, 3)
    one = offline._decode_summary(runs[:1], 256)
    assert one[0] == round(2048 / 0.85, 2) and one[1]["repeats"] == 1
    # a 1-token generate slower than the full one (a host stall) gives no step rate
    assert offline._decode_summary([(1.0, 8, 0.9, 2048, 1024)], 256)[2] is None
