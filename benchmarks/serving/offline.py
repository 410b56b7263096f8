#!/usr/bin/env python3
"""Offline vLLM throughput for one model shape and several methods (issue 8 item 2a/2c, 3, 4).

Each method runs in a FRESH subprocess (``offline.py --worker``) so GPU memory is freed between
methods; the parent never imports vLLM. The worker builds
``LLM(model=<shape folder>, load_format="dummy", quantization=..., dtype="bfloat16",
max_model_len=..., gpu_memory_utilization=..., tensor_parallel_size=..., enforce_eager=False)``
with vLLM's defaults otherwise (torch.compile + CUDA graphs ON) and measures:

* decode: for each batch B, B random 128-token prompts, 256 output tokens, ``ignore_eos``,
  temperature 0; output tokens/s = generated tokens / wall time of ``generate`` (after a
  warm-up ``generate`` of the same batch with 16 output tokens and different prompts), the
  batch's prefill included (``decode_tok_s``); and the decode steps alone
  (``decode_step_tok_s``, like online TPOT: the first token left out): (generated tokens - B) /
  (that wall time - the wall time of the same batch with 1 output token, fresh prompts); both
  the median of ``--decode-repeats`` such pairs (default 3; each pair's rates kept in
  ``decode_detail``): one generate at batch 1-8 is a few hundred steps of vLLM's host loop, whose
  run-to-run noise reached several percent in single measurements;
* prefill: 64 prompts x 2048 tokens, ``max_tokens=1``: prompt tokens / wall time (after a
  warm-up of 8 such prompts);
* optional "long" phase (70B capacity): B prompts x L input tokens, 256 output tokens;
* optional profile (``--profile-batches``): after a batch's measurement, vLLM's own torch
  profiler records ``--profile-steps`` decode steps of that batch (3 steps skipped first: the
  prefill and graph warm-up) and ``trace_summary.summarize`` stores where the step's GPU time
  goes (per kernel, per bucket, GPU idle share) under ``profile`` in the method's result;
* from vLLM's own startup log (parsed by the parent): weight GiB ("Model loading took"), KV
  cache GiB and tokens, CUDA-graph and compile time.

Every prompt is fresh random token ids, so prefix caching (on by default) never hits.
Results are merged into ``--out`` (default ``benchmarks/results/serving-<card>.json``) after
each method; the raw log of each method is kept in ``--log-dir``.

    python3 -m benchmarks.serving.offline --model llama-3.1-8b --methods fp8,sharq,bf16 \\
        --out $OUT --log-dir $OUT/logs --budget-s 520
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import common

DEFAULT_BATCHES = "1,8,32,128,256"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Llama-3.1-8B", help="shape name (configs/<name>)")
    ap.add_argument("--methods", default="bf16,fp8,sharq", help="comma list of bf16, fp8, sharq")
    ap.add_argument("--batches", default=DEFAULT_BATCHES, help="decode batch sizes ('' = none)")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--warmup-tokens", type=int, default=16)
    ap.add_argument("--decode-repeats", type=int, default=3,
                    help="decode measurements a batch (1-token + full generate pairs); the medians are reported")
    ap.add_argument("--prefill-prompts", type=int, default=64, help="0 disables the prefill phase")
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--long-batch", type=int, default=0, help="long phase: concurrent sequences (0 = off)")
    ap.add_argument("--long-input", type=int, default=2048, help="long phase: prompt tokens each")
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--enforce-eager", action="store_true", help="NOT the default; CPU smoke tests")
    ap.add_argument("--eager-fallback", action="store_true",
                    help="if a method fails to start with CUDA graphs, retry it once with enforce_eager")
    ap.add_argument("--sharq-options", default="", help='JSON, e.g. \'{"format": "mxfp4"}\' '
                    "(passed as hf_overrides quantization_config for the sharq method)")
    ap.add_argument("--engine-args", default="", help="JSON dict of extra LLM(...) kwargs for every method")
    ap.add_argument("--env", action="append", default=[], help="KEY=VAL for the children (repeatable)")
    ap.add_argument("--shapes-dir", default=None, help="where shape folders are materialized")
    ap.add_argument("--out", default=None, help="result JSON file or folder (serving-<card>.json)")
    ap.add_argument("--log-dir", default=None, help="per-method vLLM logs (default: next to --out)")
    ap.add_argument("--tag", default="", help="suffix for the run key in the JSON (variants)")
    ap.add_argument("--budget-s", type=float, default=0, help="whole invocation (0 = unlimited)")
    ap.add_argument("--method-timeout-s", type=float, default=480)
    ap.add_argument("--min-method-s", type=float, default=100,
                    help="do not start a method with less time than this left in the budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-batches", default="", help="decode batches to profile after measuring them")
    ap.add_argument("--profile-steps", type=int, default=16, help="decode steps a profile records")
    # internal
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# =============================================================================================
# worker (one method, one fresh process; the only place vLLM is imported)
# =============================================================================================


def _prompts(rng, n: int, length: int, vocab_hi: int) -> list[dict[str, list[int]]]:
    # ids in [1000, vocab_hi): plain BPE pieces of both tokenizers, no special tokens
    return [{"prompt_token_ids": [int(x) for x in rng.integers(1000, vocab_hi, size=length)]}
            for _ in range(n)]


def _decode_summary(runs: list[tuple[float, int, float, int, int]], out_len: int) -> tuple[float, dict, float | None]:
    """Repeats of (1-token wall, its tokens, full wall, generated tokens, prompt tokens) ->
    (median end-to-end tok/s, decode_detail, median decode-step tok/s or None). The detail keeps
    the median repeat's walls (by end-to-end rate) and every repeat's two rates."""
    rates = [n_out / dt for _, _, dt, n_out, _ in runs]
    steps = [(n_out - n1) / (dt - dt1) for dt1, n1, dt, n_out, _ in runs if dt > dt1 and n_out > n1]
    dt1, _, dt, n_out, n_in = sorted(runs, key=lambda r: r[3] / r[2])[(len(runs) - 1) // 2]
    detail = {"wall_s": round(dt, 4), "out_tokens": n_out, "in_tokens": n_in,
              "ms_per_step": round(1000 * dt / out_len, 3), "prefill_wall_s": round(dt1, 4),
              "ms_per_decode_step": round(1000 * (dt - dt1) / max(1, out_len - 1), 3),
              "repeats": len(runs), "decode_tok_s_runs": [round(x, 2) for x in rates],
              "decode_step_tok_s_runs": [round(x, 2) for x in steps]}
    return (round(statistics.median(rates), 2), detail,
            round(statistics.median(steps), 2) if steps else None)


def _host_load() -> float | None:
    """The host's 1-minute load average: recorded after each phase, so a reader can tell a run
    that shared its CPUs (another engine, a test process on the host's other GPU) from one that
    did not (vLLM's step is CPU work too; at batch 1 it shows in the tokens/s)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


PROFILE_SKIP_STEPS = 3  # engine steps before a profile starts recording: the prefill, graph warm-up


def _profile_decode(llm: Any, generate: Any, folder: Path, steps: int) -> dict[str, Any]:
    """Record ``steps`` decode steps with vLLM's torch profiler and summarize the worker's trace."""
    from benchmarks.serving import trace_summary

    t0 = time.time()
    try:
        llm.start_profile()
        generate(PROFILE_SKIP_STEPS + steps + 4)
        llm.stop_profile()
    except Exception as e:  # a profile is extra evidence: never fail the run for it
        return {"error": repr(e)[:300]}
    trace, size = None, -1
    for _ in range(120):  # the worker writes the trace when its profiler stops; wait until it is whole
        trace = trace_summary.newest_worker_trace(folder, t0)
        if trace is not None and trace.stat().st_size == size:
            break
        size = trace.stat().st_size if trace is not None else -1
        time.sleep(0.5)
    if trace is None:
        return {"error": f"no trace written under {folder}"}
    try:
        out = trace_summary.summarize(trace_summary.load_trace(trace))
    except Exception as e:
        return {"error": f"{trace.name}: {e!r}"[:300]}
    out["trace"] = trace.name
    out["profiled_s"] = round(time.time() - t0, 1)
    return out


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    res_path = Path(spec["result"])
    res: dict[str, Any] = {"method": spec["method"], "phases_skipped": {}, "decode_tok_s": {},
                           "decode_detail": {}, "status": "starting"}
    deadline = spec["deadline"]

    def save() -> None:
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(res_path)

    def left() -> float:
        return deadline - time.time()

    save()
    import numpy as np
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    res["vllm"] = vllm.__version__
    res["host_cpus"] = os.cpu_count()
    res["torch"] = torch.__version__
    res["torch_cuda"] = torch.version.cuda
    kwargs: dict[str, Any] = dict(
        model=spec["folder"], tokenizer=spec["folder"], load_format="dummy", dtype="bfloat16",
        max_model_len=spec["max_model_len"], gpu_memory_utilization=spec["gpu_memory_utilization"],
        tensor_parallel_size=spec["tp"], enforce_eager=spec["enforce_eager"], seed=spec["seed"],
    )
    if spec["quantization"]:
        kwargs["quantization"] = spec["quantization"]
    if spec["method"] == "sharq" and spec.get("sharq_options"):
        kwargs["hf_overrides"] = {"quantization_config": {"quant_method": "sharq", **spec["sharq_options"]}}
    profile_batches = set(spec.get("profile_batches") or [])
    profile_dir = Path(spec.get("profile_dir") or res_path.parent / "profile")
    if profile_batches:
        profile_dir.mkdir(parents=True, exist_ok=True)
        kwargs["profiler_config"] = {
            "profiler": "torch", "torch_profiler_dir": str(profile_dir), "torch_profiler_with_stack": False,
            "torch_profiler_dump_cuda_time_total": False, "ignore_frontend": True,
            "delay_iterations": PROFILE_SKIP_STEPS, "max_iterations": spec["profile_steps"],
        }
    kwargs.update(spec.get("engine_args") or {})
    res["engine_kwargs"] = {k: v for k, v in kwargs.items() if k not in ("model", "tokenizer")}
    save()

    t0 = time.time()
    llm = LLM(**kwargs)
    res["startup_s"] = round(time.time() - t0, 2)
    res["status"] = "started"
    try:
        res["card"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:
        res["card"] = f"unknown ({e})"
    try:  # engine-side numbers where the frontend sees them (the log is the primary source)
        vc = llm.llm_engine.vllm_config
        res["engine"] = {
            "max_num_seqs": vc.scheduler_config.max_num_seqs,
            "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
            "block_size": vc.cache_config.block_size,
            "num_gpu_blocks": vc.cache_config.num_gpu_blocks,
            "enable_prefix_caching": vc.cache_config.enable_prefix_caching,
            "cudagraph_mode": str(getattr(vc.compilation_config, "cudagraph_mode", None)),
            "compilation_mode": str(getattr(vc.compilation_config, "mode", getattr(vc.compilation_config, "level", None))),
        }
    except Exception as e:
        res["engine"] = {"error": repr(e)}
    try:  # tensor bytes + quant method per layer, measured in the workers (one entry per rank)
        from benchmarks.serving import probe  # unpickled by reference in the workers

        res["model_stats"] = llm.apply_model(probe.model_stats)
    except Exception as e:
        res["model_stats"] = {"error": repr(e)[:300]}
    save()

    rng = np.random.default_rng(spec["seed"])
    vocab_hi = min(100_000, int(spec["vocab_size"]) - 1000)
    out_len, in_len, wt = spec["output_len"], spec["input_len"], spec["warmup_tokens"]
    teardown = spec["teardown_s"]

    def gen(prompts, max_tokens: int) -> tuple[float, int, int]:
        sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        n_in = sum(len(o.prompt_token_ids or []) for o in outs)
        return dt, n_out, n_in

    # ---- decode -------------------------------------------------------------------------------
    rate = None  # last measured output tokens/s (for the time estimate of the next phase)
    for b in spec["batches"]:
        est = 30.0 if rate is None else 1.5 * (b * (out_len + wt)) / rate + 5
        if left() - teardown < est:
            res["phases_skipped"][f"decode_{b}"] = f"time: est {est:.0f}s, left {left():.0f}s"
            save()
            continue
        gen(_prompts(rng, b, in_len, vocab_hi), wt)  # warm-up, different prompts
        runs = []  # (dt1, n1, dt, n_out, n_in) of each repeat
        for r in range(spec["decode_repeats"]):
            if r and left() - teardown < 2 * runs[-1][2] + 5:
                break  # a repeat more would not fit the budget
            # the same batch with one output token: its prefill (+ the first token), which the
            # decode-step rate below leaves out (fresh prompts: no prefix-cache hits)
            dt1, n1, _ = gen(_prompts(rng, b, in_len, vocab_hi), 1)
            runs.append((dt1, n1, *gen(_prompts(rng, b, in_len, vocab_hi), out_len)))
        res["decode_tok_s"][str(b)], res["decode_detail"][str(b)], step_rate = _decode_summary(runs, out_len)
        rate = res["decode_tok_s"][str(b)]
        if step_rate is not None:
            res.setdefault("decode_step_tok_s", {})[str(b)] = step_rate
        res["decode_detail"][str(b)]["loadavg_1m"] = _host_load()
        save()
        if b in profile_batches and left() - teardown > 60:
            res.setdefault("profile", {})[str(b)] = _profile_decode(
                llm, lambda n, b=b: gen(_prompts(rng, b, in_len, vocab_hi), n), profile_dir, spec["profile_steps"])
            save()

    # ---- prefill ------------------------------------------------------------------------------
    n_pf, pf_len = spec["prefill_prompts"], spec["prefill_len"]
    if n_pf > 0:
        pf_len = min(pf_len, spec["max_model_len"] - 1)
        est = 60.0 if rate is None else 20.0 + 1.3 * n_pf * pf_len / max(rate * 5, 1.0)
        if left() - teardown < min(est, 60.0):
            res["phases_skipped"]["prefill"] = f"time: left {left():.0f}s"
        else:
            gen(_prompts(rng, max(1, n_pf // 8), pf_len, vocab_hi), 1)
            dt, n_out, n_in = gen(_prompts(rng, n_pf, pf_len, vocab_hi), 1)
            res["prefill_tok_s"] = round(n_in / dt, 1)
            res["prefill_detail"] = {"wall_s": round(dt, 4), "prompts": n_pf, "prompt_len": pf_len,
                                     "loadavg_1m": _host_load(),
                                     "in_tokens": n_in}
        save()

    # ---- long (capacity) phase ----------------------------------------------------------------
    lb = spec["long_batch"]
    if lb > 0:
        l_in = min(spec["long_input"], spec["max_model_len"] - out_len - 1)
        est = 60.0 if rate is None else 30.0 + 3.0 * lb * out_len / rate
        if left() - teardown < est:
            res["phases_skipped"]["long"] = f"time: est {est:.0f}s, left {left():.0f}s"
        else:
            dt, n_out, n_in = gen(_prompts(rng, lb, l_in, vocab_hi), out_len)
            res["long"] = {"batch": lb, "input_len": l_in, "output_len": out_len, "wall_s": round(dt, 3),
                           "out_tok_s": round(n_out / dt, 2), "total_tok_s": round((n_in + n_out) / dt, 1),
                           "kv_tokens_needed": lb * (l_in + out_len)}
        save()

    res["status"] = "ok"
    res["total_s"] = round(time.time() - t0, 2)
    save()
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# =============================================================================================
# parent
# =============================================================================================


def run_method(args: argparse.Namespace, method: str, folder: Path, vocab: int, log_path: Path,
               work: Path, deadline: common.Deadline, enforce_eager: bool) -> dict[str, Any]:
    quant = common.METHODS[method]
    t_start = time.time()
    timeout = min(args.method_timeout_s, deadline.left() - 5)
    spec = {
        "method": method, "quantization": quant, "folder": str(folder), "vocab_size": vocab,
        "max_model_len": args.max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization,
        "tp": args.tp, "enforce_eager": enforce_eager, "seed": args.seed,
        "batches": [int(b) for b in args.batches.split(",") if b.strip()],
        "input_len": args.input_len, "output_len": args.output_len, "warmup_tokens": args.warmup_tokens,
        "decode_repeats": max(1, args.decode_repeats),
        "prefill_prompts": args.prefill_prompts, "prefill_len": args.prefill_len,
        "long_batch": args.long_batch, "long_input": args.long_input,
        "sharq_options": json.loads(args.sharq_options) if args.sharq_options else None,
        "engine_args": json.loads(args.engine_args) if args.engine_args else None,
        "deadline": t_start + timeout, "teardown_s": 15.0,
        "result": str(work / f"{method}.result.json"),
        "profile_batches": [int(b) for b in args.profile_batches.split(",") if b.strip()],
        "profile_steps": args.profile_steps, "profile_dir": str(work / f"profile-{method}"),
    }
    spec_path = work / f"{method}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    Path(spec["result"]).unlink(missing_ok=True)
    extra_env = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # LLM.apply_model(probe.model_stats)
    extra_env.update(dict(kv.split("=", 1) for kv in args.env))
    cmd = [common.python(), "-m", "benchmarks.serving.offline", "--worker", "--spec", str(spec_path)]
    common.log(f"{method}: start (timeout {timeout:.0f}s, eager={enforce_eager}) log={log_path}")
    proc = common.popen_logged(cmd, log_path, common.bench_env(extra_env))
    rc, timed_out = common.wait_logged(proc, timeout)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    res: dict[str, Any] = {}
    if Path(spec["result"]).exists():
        res = json.loads(Path(spec["result"]).read_text())
    parsed = common.parse_vllm_log(text)
    raw = parsed.pop("raw")
    res.update({k: v for k, v in parsed.items() if k not in res})
    res["log_lines"] = raw
    res["wall_s"] = round(time.time() - t_start, 1)
    res["rc"] = rc
    res["enforce_eager"] = enforce_eager
    res["log"] = log_path.name
    if timed_out:
        res["status"] = f"timeout after {timeout:.0f}s (partial results kept)" if res.get("status") in ("started", "ok") else "timeout"
    elif rc != 0 or res.get("status") != "ok":
        res["status"] = "failed" if res.get("status") != "started" else "failed after start"
        res["error"] = common.error_summary(text)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.spec)
        return 0
    common.install_sigterm()
    deadline = common.Deadline(args.budget_s)
    setup = common.setup_run(args)
    model, folder, card, out = setup.model, setup.folder, setup.card, setup.out
    log_dir, run, methods = setup.log_dir, setup.run, setup.methods
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    work = log_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    run_meta = {"model": model, "tp": args.tp, "max_model_len": args.max_model_len,
                "gpu_memory_utilization": args.gpu_memory_utilization,
                "input_len": args.input_len, "output_len": args.output_len,
                "prefill": f"{args.prefill_prompts}x{args.prefill_len}", "weights": "dummy (random)",
                "sharq_options": args.sharq_options or None}
    common.log(f"offline {run}: methods {methods}, out {out}, budget {args.budget_s or 'none'}s")
    summary = []
    for method in methods:
        if deadline.left() < args.min_method_s:
            common.log(f"{method}: SKIPPED, {deadline.left():.0f}s left < --min-method-s {args.min_method_s:.0f}")
            res = {"status": f"skipped: {deadline.left():.0f}s left in the budget"}
            common.save_results(out, run, {**run_meta, "methods": {method: res}}, {"card": card, "card_slug": common.card_slug(card)})
            summary.append((method, res))
            continue
        log_path = log_dir / f"offline-{model}-tp{args.tp}{'-' + args.tag if args.tag else ''}-{method}.log"
        log_path.unlink(missing_ok=True)
        res = run_method(args, method, folder, vocab, log_path, work, deadline, args.enforce_eager)
        if (args.eager_fallback and not args.enforce_eager and res.get("status", "").startswith("failed")
                and "startup_s" not in res and deadline.left() > args.min_method_s):
            common.log(f"{method}: failed to start with CUDA graphs; retrying with enforce_eager "
                       f"({res.get('error', '')[-300:]})")
            first_error = res.get("error")
            eager_log = log_path.with_name(log_path.stem + "-eager.log")
            eager_log.unlink(missing_ok=True)
            res = run_method(args, method, folder, vocab, eager_log, work, deadline, True)
            res["graphs_error"] = first_error
        header = {"card": res.get("card", card), "card_slug": common.card_slug(res.get("card", card))}
        rm = dict(run_meta)
        for k in ("vllm", "torch"):
            if res.get(k):
                rm[k] = res[k]
        common.save_results(out, run, {**rm, "methods": {method: res}}, header)
        summary.append((method, res))
        common.log(f"{method}: {res.get('status')} decode {res.get('decode_tok_s')} prefill "
                   f"{res.get('prefill_tok_s')} weights {res.get('weight_gib')} GiB KV {res.get('kv_tokens')} tok "
                   f"({res.get('kv_gib')} GiB) startup {res.get('startup_s')}s wall {res.get('wall_s')}s")
        if res.get("error"):
            print(res["error"], flush=True)
    print(f"\n== offline {run} ({card}) -> {out}")
    print(f"{'method':8} {'status':10} {'weights':>8} {'KV tok':>9} {'prefill':>9}  decode tok/s by batch")
    for method, res in summary:
        dec = " ".join(f"{b}:{v:.0f}" for b, v in res.get("decode_tok_s", {}).items())
        w = res.get("weight_gib")
        kv = res.get("kv_tokens")
        pf = res.get("prefill_tok_s")
        print(f"{method:8} {str(res.get('status'))[:10]:10} {w if w is not None else '-':>8} "
              f"{kv if kv is not None else '-':>9} {pf if pf is not None else '-':>9}  {dec}")
    ok = all(str(r.get("status")) == "ok" for _, r in summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
