"""Shared helpers for the serving benchmarks: environment, vLLM log parsing, result JSON
merging, subprocess control. Stdlib only (imported by the parent processes, which never import
vLLM or touch the GPU, so every method's engine runs in a fresh process)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = REPO / "benchmarks" / "results"

#: method name -> vLLM `quantization` argument (None = unquantized BF16)
METHODS: dict[str, str | None] = {"bf16": None, "fp8": "fp8", "sharq": "sharq"}

# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every vLLM child: offline, no telemetry, repo importable (plugin)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's FlashInfer sampler JIT-compiles and needs network/nvcc: the bundle header says off
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    # keep NVLink multicast off on multi-GPU hosts (KINDS.md)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    env.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    # the repo root importable everywhere: sharq_vllm, and benchmarks.serving.probe (unpickled
    # by reference in the workers for LLM.apply_model)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    for p in (str(REPO),):
        if p not in parts:
            parts.append(p)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if extra:
        env.update(extra)
    return env


def card_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'cpu' -> 'cpu'."""
    low = name.lower()
    for key in ("h200", "h100", "h20", "gh200", "b200", "a100", "l40s", "rtx 5090"):
        if key in low:
            return key.replace(" ", "")
    return re.sub(r"[^a-z0-9]+", "-", low).strip("-") or "unknown"


def detect_card() -> str:
    """GPU name without importing torch in this process (nvidia-smi), else 'cpu'."""
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        if out:
            return out.splitlines()[0].strip()
    return "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# vLLM startup log parsing (line formats from vLLM 0.26's source: each pattern names its file)
# ---------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
LOG_PATTERNS: dict[str, re.Pattern[str]] = {
    # v1/worker/gpu_model_runner.py: "Model loading took %s GiB memory and %.6f seconds"
    # v1/worker/gpu/model_runner.py: "Model loading took %s GiB and %.6f seconds"
    "weight_gib": re.compile(r"Model loading took " + _NUM + r"\s*GiB(?: memory)? and " + _NUM + r" ?s"),
    # v1/worker/gpu_worker.py: "Available KV cache memory: %s GiB"
    "kv_gib": re.compile(r"Available KV cache memory: (-?" + _NUM[1:] + r"\s*GiB"),
    # v1/core/kv_cache_utils.py: "GPU KV cache size: %s tokens"
    "kv_tokens": re.compile(r"(?:GPU|CPU)? ?KV cache size: " + _NUM + r" tokens"),
    # "Maximum concurrency for %s tokens per request: %.2fx"
    "max_concurrency": re.compile(r"Maximum concurrency for " + _NUM + r" tokens per request: " + _NUM + r"x"),
    # "Graph capturing finished in %.0f secs, took %.2f GiB"
    "cudagraph": re.compile(r"Graph capturing finished in " + _NUM + r" secs?, took (-?" + _NUM[1:] + r" GiB"),
    # "init engine (profile, create kv cache, warmup model) took %.2f s (compilation: %.2f s)"
    "init_engine": re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM
                              + r" s(?: \(compilation: " + _NUM + r" s)?"),
    # "torch.compile took %.2f s in total" / "torch.compile takes %.2f s in total"
    "torch_compile": re.compile(r"torch\.compile take?s? " + _NUM + r" ?s in total"),
    # v1/engine/core.py: "Initializing a V1 LLM engine (v%s) with config: ..."
    "vllm_version": re.compile(r"Initializing a V1 LLM engine \(v([0-9][^)\s]*)\)"),
    # our plugin's own lines (kernel choice per layer etc.): kept raw
    "sharq": re.compile(r"sharq[:\]]", re.IGNORECASE),
}


def _f(s: str | None) -> float | None:
    return None if s is None else float(s.replace(",", ""))


def parse_vllm_log(text: str) -> dict[str, Any]:
    """Extract weight memory, KV capacity, compile/graph times from a vLLM log.

    Robust to prefixes like ``(EngineCore pid=12) INFO 11-27 01:02:03 [file.py:123]`` and ANSI
    colours; with TP each worker prints its own line: all values are kept in ``*_all`` lists,
    the scalar is the per-rank maximum (weights per GPU) or the first (KV, engine-wide).
    ``raw`` keeps every matched line (sharq lines capped at 40)."""
    out: dict[str, Any] = {"raw": []}
    vals: dict[str, list[tuple[float | None, ...]]] = {k: [] for k in LOG_PATTERNS}
    nsharq = 0
    for line in text.splitlines():
        line = _ANSI.sub("", line).rstrip()
        for key, pat in LOG_PATTERNS.items():
            m = pat.search(line)
            if not m:
                continue
            if key == "sharq":
                nsharq += 1
                if nsharq <= 40:
                    out["raw"].append(line[-400:])
                continue
            if key == "vllm_version":
                out.setdefault("vllm", m.group(1))
                continue
            vals[key].append(tuple(_f(g) for g in m.groups()))
            if not out["raw"] or out["raw"][-1] != line[-400:]:
                out["raw"].append(line[-400:])
    if vals["weight_gib"]:
        w = [v[0] for v in vals["weight_gib"] if v[0] is not None]
        out["weight_gib"] = max(w) if w else None
        out["weight_gib_all"] = w
        out["weight_load_s"] = max(v[1] for v in vals["weight_gib"] if v[1] is not None)
    if vals["kv_gib"]:
        out["kv_gib"] = vals["kv_gib"][0][0]
        out["kv_gib_all"] = [v[0] for v in vals["kv_gib"]]
    if vals["kv_tokens"]:
        out["kv_tokens"] = int(vals["kv_tokens"][0][0])  # type: ignore[arg-type]
    if vals["max_concurrency"]:
        out["max_concurrency"] = vals["max_concurrency"][0][1]
        out["max_concurrency_at_len"] = int(vals["max_concurrency"][0][0])  # type: ignore[arg-type]
    if vals["cudagraph"]:
        out["cudagraph_s"] = vals["cudagraph"][0][0]
        out["cudagraph_gib"] = vals["cudagraph"][0][1]
    if vals["init_engine"]:
        out["init_engine_s"] = vals["init_engine"][0][0]
        if vals["init_engine"][0][1] is not None:
            out["compile_s"] = vals["init_engine"][0][1]
    if vals["torch_compile"] and "compile_s" not in out:
        out["compile_s"] = vals["torch_compile"][0][0]
    out["sharq_log_lines"] = nsharq
    return out


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def error_summary(text: str, n: int = 12) -> str:
    """The most useful lines of a failed child's log: the last exception and its context."""
    lines = [_ANSI.sub("", ln) for ln in text.splitlines()]
    idx = [i for i, ln in enumerate(lines) if re.search(r"Error|Exception|Traceback|OOM|out of memory", ln)]
    if not idx:
        return "\n".join(lines[-n:])
    last = idx[-1]
    return "\n".join(lines[max(0, last - n + 1): last + 2])


# ---------------------------------------------------------------------------------------------
# result JSON
# ---------------------------------------------------------------------------------------------


#: Keys whose value is one measurement (one server's load levels): a new run replaces it whole,
#: so levels the new run skipped do not keep an older run's numbers beside the new ones.
WHOLE_KEYS = frozenset({"online"})


def deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k not in WHOLE_KEYS:
            deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def run_key(model: str, tp: int, tag: str = "") -> str:
    key = model if tp == 1 else f"{model}@tp{tp}"
    return f"{key}#{tag}" if tag else key


MAIN_RUN = "Llama-3.1-8B"


def load_results(path: Path) -> dict:
    if path.exists():
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(path.read_text())
    return {}


def save_results(path: Path, run: str, run_data: dict, header: dict) -> dict:
    """Merge one run's data into ``path``; refresh the top-level keys from the main run.

    Layout: ``{"card", "vllm", "torch", "model", "tp", "methods": <main run's methods>,
    "models": {run_key: {"model", "tp", "max_model_len", ..., "methods": {...}}}}`` where the
    main run is Llama-3.1-8B at TP=1 when present (else the first run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_results(path)
    for k, v in header.items():
        if v is not None:
            data[k] = v
    data.setdefault("models", {})
    deep_merge(data["models"].setdefault(run, {}), run_data)
    main = MAIN_RUN if MAIN_RUN in data["models"] else next(iter(data["models"]))
    m = data["models"][main]
    data["model"] = m.get("model", main)
    data["tp"] = m.get("tp", 1)
    data["methods"] = m.get("methods", {})
    for k in ("vllm", "torch"):
        if m.get(k):
            data[k] = m[k]
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return data


@dataclass
class RunSetup:
    """What offline.py and online.py both derive from their arguments before any engine starts."""

    model: str
    folder: Path  # the shape folder (config + tokenizer) vLLM loads with --load-format dummy
    card: str
    out: Path
    log_dir: Path
    run: str
    methods: list[str]


def setup_run(args: Any) -> RunSetup:
    """Resolve model, card, output and log folders and the run key; validate the method list.
    ``args`` carries model, shapes_dir, out, log_dir, tp, tag, methods (both scripts' CLIs)."""
    from benchmarks.serving import shapes

    model = shapes.resolve_model(args.model)
    folder = shapes.shape_path(model, Path(args.shapes_dir) if args.shapes_dir else None)
    card = detect_card()
    out = resolve_out(args.out, card)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run = run_key(model, args.tp, args.tag)
    if os.environ.get("SHARQ_RUNS_FILE"):  # gpu_serving.sh prints the runs this call touched
        with open(os.environ["SHARQ_RUNS_FILE"], "a") as fh:
            fh.write(run + "\n")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; known: {list(METHODS)}")
    return RunSetup(model, folder, card, out, log_dir, run, methods)


def resolve_out(out: str | None, card: str) -> Path:
    """--out: a .json file, or a folder (-> folder/serving-<card>.json); default results dir."""
    slug = card_slug(card)
    if not out:
        return RESULTS / f"serving-{slug}.json"
    p = Path(out)
    if p.suffix == ".json":
        return p
    return p / f"serving-{slug}.json"


# ---------------------------------------------------------------------------------------------
# subprocess control (each child in its own process group; only our own groups are killed)
# ---------------------------------------------------------------------------------------------


def popen_logged(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab", buffering=0)
    fh.write(f"\n$ {' '.join(cmd)}\n".encode())
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(REPO))
    finally:
        fh.close()  # the child holds its own copy


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the child's process group (engine core, workers), then SIGKILL; wait until all
    members are gone so the GPU memory is free for the next method."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    if proc.poll() is None or group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        t0 = time.time()
        while time.time() - t0 < grace_s and group_alive(pgid):
            with contextlib.suppress(Exception):
                proc.wait(timeout=0.5)
            time.sleep(0.2)
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            t0 = time.time()
            while time.time() - t0 < 20 and group_alive(pgid):
                time.sleep(0.2)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def wait_logged(proc: subprocess.Popen, timeout_s: float) -> tuple[int | None, bool]:
    """Wait for the child; on timeout stop its group. Returns (returncode, timed_out)."""
    try:
        rc = proc.wait(timeout=max(1.0, timeout_s))
        # children of the child (engine core) may outlive it briefly
        stop_group(proc, grace_s=15)
        return rc, False
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return proc.returncode, True
    except BaseException:  # SIGTERM/Ctrl-C of the parent: take the child's group down too
        stop_group(proc, grace_s=10)
        raise


def install_sigterm() -> None:
    """SIGTERM -> KeyboardInterrupt, so `finally` blocks stop our children's process groups."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


class Deadline:
    """Overall time budget of one invocation (a device call is limited to ~10 minutes)."""

    def __init__(self, budget_s: float | None):
        self.t0 = time.time()
        self.end = None if not budget_s else self.t0 + budget_s

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def python() -> str:
    return sys.executable
