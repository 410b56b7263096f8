"""Where the steps of a decode batch spend their time: its prefill step and (--decode) its
decode steps (device-side diagnostic).

    python3 tools/gpu/profile_prefill.py METHOD OUTDIR [--batches 8,32] [--repeats 6] [--decode N]

Runs vLLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core and the model run
here, so the PyTorch profiler sees the model's host ops and its kernels), Llama-3.1-8B shape with
dummy weights (benchmarks/serving/shapes.py), compile + CUDA graphs as served. For each batch B:
a warm-up generate, then ``--repeats`` generates of B fresh 128-token prompts with one output
token (the ``prefill_wall_s`` of benchmarks/serving/offline.py), wall times kept; then two more
under torch.profiler (CPU + CUDA), summarized: wall, GPU busy (union of kernel intervals), the
host's CUDA runtime calls (allocations, synchronizations, launches), the host ops by self time
(SharQ's custom ops among them, with their per-call host cost), and GPU idle gaps over 1 ms.
``--decode N`` adds the batch's decode steps: one generate of 1 output token and one of 1 + N
profiled apart, and the difference over N is one decode step (the same prefill cancels): its
wall, GPU busy time and every kernel's time a step (kernels replayed from vLLM's CUDA graphs
included), grouped in the buckets of benchmarks/serving/trace_summary.py (offline.py's trace summaries).
``--mp`` keeps vLLM's default engine-core process instead (as benchmarks/serving/offline.py
runs it; no profile then): the walls, and from vLLM's request stats (RequestOutput.metrics) in
how many engine steps each batch was first scheduled and how far apart; with ``--decode N``
the decode step's wall alone, the same way, three times. ``--layers L`` cuts the model to L
decoder layers (hf_overrides): with 2 a step's GPU work is a few hundred us, so its wall bounds
what the rest of the step (vLLM's host loop, asynchronous scheduling on) costs: whether a
method's full step is GPU-bound (session 32: SharQ 1.80 ms with 2 layers, 2.55 whole);
``--no-detok-too`` measures the walls again without detokenization (the frontend's share).
Writes OUTDIR/prefill-<method><tag>.json and the traces (prefill-<method><tag>-b<B>.json.gz).
Session 31's runs: benchmarks/results/prefill-step-H200.json; session 32's decode steps:
benchmarks/results/decode-step-H200.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def gpu_events(prof) -> list:
    import torch

    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def kernel_totals(events) -> dict[str, list[float]]:
    """kernel name (first 120 characters) -> [count, total ms]"""
    kern: dict[str, list[float]] = {}
    for e in events:
        k = kern.setdefault(e.name[:120], [0, 0.0])
        k[0] += 1
        k[1] += (e.time_range.end - e.time_range.start) / 1000
    return kern


def per_step(short: dict[str, list[float]], long: dict[str, list[float]], steps: int) -> dict:
    """One decode step from two profiles of the same batch, `long` with `steps` more decode
    steps than `short`: each kernel's (long - short) / steps in us and launches, by the buckets
    offline.py's trace summaries use (benchmarks/serving/trace_summary.py)."""
    from benchmarks.serving.trace_summary import bucket_of

    kern = {}
    for name in set(short) | set(long):
        n0, t0 = short.get(name, [0, 0.0])
        n1, t1 = long.get(name, [0, 0.0])
        kern[name] = [round((n1 - n0) / steps, 2), round(1000 * (t1 - t0) / steps, 2)]
    groups: dict[str, list[float]] = {}
    for name, (n, us) in kern.items():
        g = groups.setdefault(bucket_of(name), [0.0, 0.0])
        g[0] = round(g[0] + n, 2)
        g[1] = round(g[1] + us, 2)
    top = dict(sorted(kern.items(), key=lambda kv: -kv[1][1])[:40])
    return {"kernel_us": round(sum(v[1] for v in kern.values()), 1),
            "groups_launches_us": dict(sorted(groups.items(), key=lambda kv: -kv[1][1])),
            "top_kernels_launches_us": top}


def intervals(events) -> list[tuple[float, float]]:
    return sorted((e.time_range.start, e.time_range.end) for e in events)


def idle_gaps_ms(iv: list[tuple[float, float]], over_us: float = 1000.0) -> list[float]:
    """Sorted kernel intervals (us) -> the GPU's idle gaps longer than over_us, in ms."""
    gaps, end = [], None
    for s, e in iv:
        if end is not None and s - end > over_us:
            gaps.append(round((s - end) / 1000, 2))
        end = e if end is None else max(end, e)
    return gaps


def summarize(prof, wall_s: float) -> dict:
    events = gpu_events(prof)
    from benchmarks.serving.trace_summary import union_us

    iv = intervals(events)
    busy, gaps = union_us(iv), idle_gaps_ms(iv)
    rt: dict[str, list[float]] = {}
    ops: dict[str, list[float]] = {}
    for e in prof.key_averages():
        name = e.key
        if name.startswith("cu"):  # CUDA runtime / driver calls
            rt[name] = [e.count, round(e.cpu_time_total / 1000, 3)]
        else:
            ops[name] = [e.count, round(e.self_cpu_time_total / 1000, 3), round(e.cpu_time_total / 1000, 3)]
    top_ops = dict(sorted(ops.items(), key=lambda kv: -kv[1][1])[:40])
    sharq = {k: [*v, round(1000 * v[2] / max(1, v[0]), 1)] for k, v in ops.items() if "sharq" in k}
    kern = kernel_totals(events)
    top_kern = {k: [v[0], round(v[1], 3)] for k, v in sorted(kern.items(), key=lambda kv: -kv[1][1])[:30]}
    return {"wall_ms": round(1000 * wall_s, 2), "gpu_busy_ms": round(busy / 1000, 2),
            "gpu_span_ms": round((iv[-1][1] - iv[0][0]) / 1000, 2) if iv else None,
            "gaps_over_1ms": gaps[:60], "runtime_calls": rt,
            "sharq_ops_count_selfms_totalms_us_per_call": sharq,
            "top_host_ops_count_selfms_totalms": top_ops, "top_kernels_count_ms": top_kern}


def decode_walls(gen, b: int, n: int, repeats: int = 3) -> list[float]:
    """A decode step's wall in ms, `repeats` times: (gen(b, 1 + n) - gen(b, 1)) / n."""
    out = []
    for _ in range(repeats):
        w1 = gen(b, 1)
        out.append(round(1000 * (gen(b, 1 + n) - w1) / n, 3))
    return out


def decode_step(gen, b: int, n: int) -> dict:
    """gen(b, 1) and gen(b, 1 + n), each profiled on its own: one decode step (per_step)."""
    import torch

    from benchmarks.serving.trace_summary import union_us

    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    walls, busy, totals = [], [], []
    for tokens in (1, 1 + n):
        with torch.profiler.profile(activities=acts) as prof:
            t = time.perf_counter()
            gen(b, tokens)
            walls.append(time.perf_counter() - t)
        events = gpu_events(prof)
        busy.append(union_us(intervals(events)) / 1000)
        totals.append(kernel_totals(events))
    return {"steps": n, "wall_ms": round(1000 * (walls[1] - walls[0]) / n, 3),
            "gpu_busy_ms": round((busy[1] - busy[0]) / n, 3), **per_step(totals[0], totals[1], n)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=("fp8", "sharq", "bf16"))
    ap.add_argument("out")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--in-len", type=int, default=128)
    ap.add_argument("--mp", action="store_true", help="engine core in its own process (no profile)")
    ap.add_argument("--probe", action="store_true", help="LLM.apply_model(probe.model_stats) first, as offline.py")
    ap.add_argument("--tag", default="")
    ap.add_argument("--decode", type=int, default=0, metavar="N",
                    help="also N decode steps of each batch: profiled in-process, walls with --mp")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0: the model's own)")
    ap.add_argument("--no-detok-too", action="store_true",
                    help="with --decode: the step's walls again with SamplingParams(detokenize=False)")
    args = ap.parse_args()
    if not args.mp:  # the engine core and the model in this process (else vLLM's own process)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from benchmarks.serving import shapes

    if args.method == "sharq":
        import sharq_vllm

        sharq_vllm.register()
    folder = shapes.materialize(["Llama-3.1-8B"], quiet=True)["Llama-3.1-8B"]
    kw = dict(model=str(folder), tokenizer=str(folder), load_format="dummy", dtype="bfloat16",
              max_model_len=4096, gpu_memory_utilization=0.9, seed=0)
    if args.method != "bf16":
        kw["quantization"] = args.method
    if args.layers:
        kw["hf_overrides"] = {"num_hidden_layers": args.layers}
    kw["disable_log_stats"] = False  # request timestamps (RequestOutput.metrics)
    t0 = time.time()
    llm = LLM(**kw)
    res: dict = {"method": args.method, "vllm": vllm.__version__, "torch": torch.__version__,
                 "card": torch.cuda.get_device_name(0), "startup_s": round(time.time() - t0, 1), "batches": {}}
    if args.probe:
        from benchmarks.serving import probe

        res["model_stats_s"] = time.time()
        llm.apply_model(probe.model_stats)
        res["model_stats_s"] = round(time.time() - res["model_stats_s"], 2)
    rng = np.random.default_rng(0)

    def prompts(b: int) -> list:
        return [{"prompt_token_ids": rng.integers(1000, 100_000, size=args.in_len).tolist()} for _ in range(b)]

    steps: list[dict] = []

    def gen(b: int, n: int, detokenize: bool = True) -> float:
        sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=detokenize)
        p = prompts(b)
        t = time.perf_counter()
        outs = llm.generate(p, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        ms = [o.metrics for o in outs if getattr(o, "metrics", None) is not None]
        if ms:  # engine-core timestamps (vLLM's request stats): in how many steps the batch began
            sched = sorted({round(m.scheduled_ts, 4) for m in ms})
            first = sorted({round(m.first_token_ts, 4) for m in ms})
            steps.append({"wall_ms": round(1000 * dt, 2), "scheduling_steps": len(sched),
                          "first_token_steps": len(first),
                          "scheduled_spread_ms": round(1000 * (sched[-1] - sched[0]), 2),
                          "first_token_spread_ms": round(1000 * (first[-1] - first[0]), 2)})
        return dt

    for b in [int(x) for x in args.batches.split(",")]:
        gen(b, 16)
        steps.clear()
        walls = [gen(b, 1) for _ in range(args.repeats)]
        entry = {"prefill_wall_ms": [round(1000 * w, 2) for w in walls],
                 "median_ms": round(1000 * statistics.median(walls), 2), "engine_steps": list(steps)}
        res["batches"][str(b)] = entry
        if args.decode:
            entry["decode_step_wall_ms"] = w = decode_walls(gen, b, args.decode)
            say_decode = f"; decode step walls {w} ms"
            if args.no_detok_too:
                entry["decode_step_wall_ms_no_detokenize"] = w = decode_walls(
                    lambda b_, n_: gen(b_, n_, detokenize=False), b, args.decode)
                say_decode += f", without detokenization {w} ms"
        else:
            say_decode = ""
        if args.mp:
            say = (f"scheduling steps {[s['scheduling_steps'] for s in steps]}, "
                   f"spread ms {[s['scheduled_spread_ms'] for s in steps]}") + say_decode
        else:
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=acts) as prof:
                t = time.perf_counter()
                gen(b, 1)
                gen(b, 1)
                wall = time.perf_counter() - t
            prof.export_chrome_trace(str(out / f"prefill-{args.method}{args.tag}-b{b}.json.gz"))  # torch gzips
            p2 = entry["profile_two_calls"] = summarize(prof, wall)
            say = f"profiled 2 calls {p2['wall_ms']} ms wall, GPU busy {p2['gpu_busy_ms']} ms"
            say += say_decode
            if args.decode:
                entry["decode_step"] = d = decode_step(gen, b, args.decode)
                say += (f"; profiled decode step {d['wall_ms']} ms wall, GPU busy {d['gpu_busy_ms']} ms, "
                        f"kernels {d['kernel_us']} us: " +
                        ", ".join(f"{g} {v[1]}" for g, v in list(d["groups_launches_us"].items())[:6]))
        (out / f"prefill-{args.method}{args.tag}.json").write_text(json.dumps(res, indent=1))
        print(f"[profile_prefill] {args.method}{args.tag} b{b}: walls {entry['prefill_wall_ms']} ms; {say}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
