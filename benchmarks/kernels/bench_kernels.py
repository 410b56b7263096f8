"""SharQ kernel benchmark (issue 4 item 4): one script, one GPU call.

Times the four Llama-3.1-8B linear shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672,
down 14336->4096; --model: another config of benchmarks/serving/configs) at M = 1, 16, 64, 256, 1024, 4096, 16384 for
  bf16        torch.nn.functional.linear (cuBLAS)
  fp8         vLLM's stock FP8 linear: dynamic per-token scaled_fp8_quant + cutlass_scaled_mm
              (per-tensor FP8 weight)                               [needs vllm]
  marlin_fp4  vLLM's Marlin NVFP4 W4A16 (apply_fp4_marlin_linear -> marlin_gemm) [needs vllm]
  sharq       SharQ linear: fused preparation + GEMM (the op's own M dispatch)
  sharq_gemm  the GEMM alone on a prepared x_hat (op dispatch)
  sharq_prep  the preparation alone
  sharq_mma / sharq_dqmm   the two GEMM paths forced (for the dispatch threshold)
  sharq_dequant   the dequantization kernel alone (the large-M path's first pass)
Timing: each measurement captures one CUDA graph holding R calls on R different copies of the
inputs and weights (R chosen so one replay touches >= 5x the L2), replays it, and takes the
median over replays (CUDA events) / R. Also measures the device-to-device copy bandwidth and
reports the M=1 GEMM's achieved weight bandwidth against it.

Output: a table (medians, ratios), JSON benchmarks/results/kernels-<card>.json (and under $OUT),
and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import traceback

import torch

from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.reference import quantize_weight

DEFAULT_MODEL = "Llama-3.1-8B"
MODEL = DEFAULT_MODEL
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "configs")


def model_shapes(name: str) -> dict[str, tuple[int, int]]:
    """The four linears (N, K) of a decoder layer of benchmarks/serving/configs/NAME/config.json
    (the shapes the serving benchmark runs): fused qkv, o, fused gate_up, down."""
    with open(os.path.join(CONFIGS, name, "config.json")) as f:
        c = json.load(f)
    hidden, inter = c["hidden_size"], c["intermediate_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    hd = c.get("head_dim") or hidden // heads
    return {"qkv": ((heads + 2 * kv) * hd, hidden), "o": (hidden, heads * hd), "gate_up": (2 * inter, hidden),
            "down": (hidden, inter)}


SHAPES = model_shapes(MODEL)  # name: (N, K); --model replaces them with another model's four linears
MS = [1, 16, 64, 256, 1024, 4096, 16384]
L2_ROTATE_BYTES = 256 << 20
MAX_COPIES = 24


DEVICE = "cuda"


def card_name() -> str:
    if DEVICE != "cuda":
        return "cpu-smoke"
    name = torch.cuda.get_device_name()
    for key in ("H200", "H100", "A100", "L40S", "B200", "GH200"):
        if key in name:
            return key
    return name.replace(" ", "_")


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    if DEVICE != "cuda":
        return float("nan")
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * nbytes / statistics.median(times) / 1e9


def heavy(m, k, dtype=torch.bfloat16, device=None):
    device = device or DEVICE
    z = torch.randn(m, k, device=device)
    chi = torch.randn(m, k, 3, device=device).pow(2).mean(-1).sqrt()
    t = z / chi
    t[:, torch.randperm(k, device=device)[:4]] *= 30.0
    return t.to(dtype)


def time_graph(fn, copies: int, reps: int = 20) -> float:
    """Median microseconds per call: one graph of `copies` calls fn(i), replayed `reps` times."""
    if DEVICE != "cuda":  # --cpu-smoke: exercise the code paths, timings meaningless
        t = time.perf_counter()
        for i in range(copies):
            fn(i)
        return (time.perf_counter() - t) * 1e6 / copies
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [fn(i) for i in range(copies)]
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        g.replay()
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) * 1e3 / copies)
    del outs, g
    return statistics.median(times)


# ------------------------------------------------------------------------------------------
# methods: build(N, K, dtype) -> weight state; call(x, state) -> y; nbytes(state)
# ------------------------------------------------------------------------------------------
class Vllm:
    ok = False
    error = ""
    version = None

    @classmethod
    def load(cls):
        try:
            import vllm
            import vllm._custom_ops as vops  # noqa: F401

            cls.version = getattr(vllm, "__version__", "?")
            cls.ok = True
        except Exception as e:
            cls.error = f"{type(e).__name__}: {e}"
            cls.ok = False


def build_bf16(w, payload16, payload32):
    return {"w": w}


def call_bf16(x, st):
    return torch.nn.functional.linear(x, st["w"])


def build_fp8(w, payload16, payload32):
    import vllm._custom_ops as vops

    wq, ws = vops.scaled_fp8_quant(w, scale=None)  # per-tensor weight scale (stock fp8)
    return {"wt": wq.t(), "ws": ws}


def call_fp8(x, st):
    import vllm._custom_ops as vops

    xq, xs = vops.scaled_fp8_quant(x, use_per_token_if_dynamic=True)
    return vops.cutlass_scaled_mm(xq, st["wt"], scale_a=xs, scale_b=st["ws"], out_dtype=x.dtype)


def build_marlin(w, payload16, payload32):
    import types

    from vllm.model_executor.layers.quantization.utils import marlin_utils_fp4 as mu

    n, k = w.shape
    layer = types.SimpleNamespace()
    layer.weight = payload16.codes.cuda()
    layer.weight_scale = payload16.block_scales.cuda()
    layer.weight_global_scale = payload16.tensor_scale.reshape(()).float().cuda()
    layer.output_size_per_partition = n
    layer.input_size_per_partition = k
    layer.params_dtype = w.dtype
    layer.bias = None
    mu.prepare_fp4_layer_for_marlin(layer)
    return {"layer": layer, "n": n, "k": k, "mu": mu}


def call_marlin(x, st):
    L = st["layer"]
    return st["mu"].apply_fp4_marlin_linear(
        input=x,
        weight=L.weight,
        weight_scale=L.weight_scale,
        weight_global_scale=L.weight_global_scale,
        workspace=L.workspace,
        size_n=st["n"],
        size_k=st["k"],
        bias=None,
    )


def build_sharq(w, payload16, payload32):
    return {"p": ops.pack_weight(payload32, DEVICE)}


# x_hat in the order the vLLM plugin asks for (fragment order up to each layer's
# dispatch.serving_x_frag rows); SHARQ_BENCH_X_FRAG=0 / 16 / 32 overrides it with one value for
# every layer (32 fails where a layer's GEMM is not the stream kernel at 24 / 32 rows; the A/Bs of
# kernels-H200-xhat-frag.json: one library, several orders)
X_FRAG_ENV = os.environ.get("SHARQ_BENCH_X_FRAG")


def x_frag_of(p: ops.PackedWeight) -> int:
    return int(X_FRAG_ENV) if X_FRAG_ENV is not None else dispatch.serving_x_frag(p.n_pad, p.qweight.device)


def call_sharq(x, st):
    return ops.sharq_linear(x, st["p"], None, "nvfp4", "4:8-pairs", x_frag=x_frag_of(st["p"]))


def call_sharq_gemm(x, st):  # x is already x_hat (prepared with x_frag_of(st["p"]))
    return ops.sharq_gemm(x, st["p"], x_frag=x_frag_of(st["p"]))


def call_sharq_prep(x, st):
    return torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs")


def call_sharq_mma(x, st):
    return ops.run_gemm_kernel("mma", x, st["p"])


def call_sharq_dqmm(x, st):
    return ops.run_gemm_kernel("dequant_mm", x, st["p"])


def call_sharq_dequant(x, st):  # the dequant kernel alone (M-independent; timed at M=1)
    p = st["p"]
    if DEVICE != "cuda":
        return ops.dequantize_packed(p)
    w = torch.empty((p.n_pad, p.k), dtype=x.dtype, device=x.device)
    torch.ops.sharq_C.dequant(p.qweight, p.scales, w, p.block)
    return w


def state_bytes(st) -> int:
    total = 0
    for v in st.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, ops.PackedWeight):
            total += v.nbytes
        elif hasattr(v, "weight") and isinstance(v.weight, torch.Tensor):
            total += (
                v.weight.numel() * v.weight.element_size()
                + v.weight_scale.numel() * v.weight_scale.element_size()
            )
    return total


METHODS = {
    # name: (builder, caller, needs vllm, max M or None)
    "bf16": (build_bf16, call_bf16, False, None),
    "fp8": (build_fp8, call_fp8, True, None),
    "marlin_fp4": (build_marlin, call_marlin, True, None),
    "sharq": (build_sharq, call_sharq, False, None),
    "sharq_gemm": (build_sharq, call_sharq_gemm, False, None),
    "sharq_prep": (build_sharq, call_sharq_prep, False, None),
    "sharq_mma": (build_sharq, call_sharq_mma, False, 4096),
    "sharq_dqmm": (build_sharq, call_sharq_dqmm, False, None),
    "sharq_dequant": (build_sharq, call_sharq_dequant, False, 1),
}


def clone_state(st):
    out = {}
    for k, v in st.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.clone()
        elif isinstance(v, ops.PackedWeight):
            out[k] = ops.PackedWeight(
                v.qweight.clone(),
                v.scales.clone(),
                v.tensor_scale.clone(),
                v.n,
                v.n_pad,
                v.k,
                v.block,
                v.layout,
                v.alpha,
            )
        else:
            out[k] = v  # marlin layer: not cloned (rebuilt per copy by the caller)
    return out


def run(args) -> dict:
    if X_FRAG_ENV is not None and (not X_FRAG_ENV.isdigit() or int(X_FRAG_ENV) not in dispatch.XHAT_FRAGMENT_LIMITS):
        raise SystemExit(f"SHARQ_BENCH_X_FRAG={X_FRAG_ENV!r}: one of {dispatch.XHAT_FRAGMENT_LIMITS} (the most rows of "
                         "x_hat in fragment order, for every layer), or unset for each layer's own")
    torch.manual_seed(0)
    dtype = torch.bfloat16
    card = card_name()
    Vllm.load()
    ok, why = ops.kernel_path_available(DEVICE)
    info = {
        "card": card,
        "model": MODEL,
        "shapes": dict(SHAPES),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "vllm": Vllm.version,
        "vllm_error": None if Vllm.ok else Vllm.error,
        "sharq_kernels": why if ok else f"UNAVAILABLE: {why}",
        "dispatch": ops.describe_kernel(DEVICE),
        "x_frag": (f"SHARQ_BENCH_X_FRAG={X_FRAG_ENV} for every layer" if X_FRAG_ENV is not None else
                   "each layer's dispatch.serving_x_frag (the vLLM plugin's)"),
        "timing": "CUDA graph of R calls over R input/weight copies (>= 256 MiB touched per replay), median of replays / R",
    }
    print(json.dumps(info, indent=1), flush=True)
    copy_bw = copy_bandwidth_gbps()
    info["copy_bw_GBps"] = round(copy_bw, 1)
    print(f"device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write)", flush=True)

    methods = [m for m in args.methods.split(",") if m]
    ms = [int(v) for v in args.ms.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]
    detail: dict[str, dict[str, dict[str, float]]] = {m: {s: {} for s in shapes} for m in methods}
    errors: dict[str, str] = {}
    skipped: list[str] = []
    t_start = time.time()
    for sname in shapes:
        n, k = SHAPES[sname]
        w = heavy(n, k, dtype) * 0.02
        payload32 = quantize_weight(w, block=32)
        payload16 = quantize_weight(w, block=16) if "marlin_fp4" in methods else None
        for meth in methods:
            builder, caller, need_vllm, max_m = METHODS[meth]
            if need_vllm and (not Vllm.ok or DEVICE != "cuda"):
                continue
            try:
                base = builder(w, payload16, payload32)
            except Exception as e:
                errors[f"{meth}/{sname}"] = f"build: {type(e).__name__}: {e}"
                print(f"  [{meth} {sname}] build failed: {e}", flush=True)
                traceback.print_exc()
                continue
            wbytes = state_bytes(base)
            for m in ms:
                if max_m is not None and m > max_m:
                    continue
                # over budget: drop the expensive large-M points first (small-M sums survive),
                # stop altogether 60 s later
                over = time.time() - t_start - args.budget_s
                if over > 60 or (over > 0 and m >= 4096):
                    errors.setdefault("budget", f"skipped measurements after {args.budget_s}s")
                    skipped.append(f"{meth}/{sname}/M={m}")
                    continue
                try:
                    xbytes = m * k * 2 + m * n * 2
                    copies = max(
                        1, min(MAX_COPIES, math.ceil(L2_ROTATE_BYTES / max(1, wbytes + xbytes)))
                    )
                    if meth == "marlin_fp4":
                        states = [base] + [
                            builder(w, payload16, payload32) for _ in range(copies - 1)
                        ]
                    else:
                        states = [base] + [clone_state(base) for _ in range(copies - 1)]
                    xs = [heavy(m, k, dtype) for _ in range(copies)]
                    if meth in ("sharq_gemm", "sharq_mma", "sharq_dqmm"):
                        frag = x_frag_of(base["p"]) if meth == "sharq_gemm" else 0
                        xs = [torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs", x_frag=frag) for x in xs]
                    us = time_graph(
                        lambda i, c=caller, xs=xs, st=states: c(xs[i], st[i]),
                        copies,
                        reps=args.reps,
                    )
                    detail[meth][sname][str(m)] = round(us, 3)
                    print(
                        f"  {meth:11s} {sname:8s} M={m:6d}  {us:10.2f} us  (R={copies})", flush=True
                    )
                    del states, xs
                except Exception as e:
                    errors[f"{meth}/{sname}/M={m}"] = f"{type(e).__name__}: {e}"
                    print(f"  [{meth} {sname} M={m}] failed: {e}", flush=True)
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
            del base
            if DEVICE == "cuda":
                torch.cuda.empty_cache()

    sums: dict[str, dict[str, float]] = {}
    for meth in methods:
        for m in ms:
            vals = [detail[meth][s].get(str(m)) for s in shapes]
            if all(v is not None for v in vals) and set(shapes) == set(SHAPES):
                sums.setdefault(meth, {})[str(m)] = round(sum(vals), 2)
    # M=1 bandwidth: FP4 weight bytes of the four layers over the GEMM time
    bw = {}
    fp4_bytes = sum(n * k // 2 + n * k // 32 for n, k in (SHAPES[s] for s in shapes))
    for meth in ("sharq_gemm", "sharq_mma", "sharq", "marlin_fp4"):
        t = sums.get(meth, {}).get("1")
        if t:
            gbps = fp4_bytes / (t * 1e-6) / 1e9
            bw[meth] = {"GBps": round(gbps, 1), "fraction_of_copy_bw": round(gbps / copy_bw, 3)}
    for meth in ("bf16", "fp8"):
        t = sums.get(meth, {}).get("1")
        if t:
            per = 2 if meth == "bf16" else 1
            b = sum(n * k * per for n, k in (SHAPES[s] for s in shapes))
            bw[meth] = {
                "GBps": round(b / (t * 1e-6) / 1e9, 1),
                "fraction_of_copy_bw": round(b / (t * 1e-6) / 1e9 / copy_bw, 3),
            }
    if not args.no_prep_sweep and DEVICE == "cuda" and ok:
        info["prep_configs_us"] = prep_sweep(args, t_start)
    if args.gemm_sweep and DEVICE == "cuda" and ok:
        info["gemm_variants_us"] = gemm_variant_sweep(args, t_start)
    if args.norm_sweep and DEVICE == "cuda" and ok:
        info["norm_configs_us"] = norm_sweep(args, t_start)
    # derived: what the kernel work needs (issue 4 targets)
    derived: dict[str, object] = {}
    dq = sums.get("sharq_dequant", {}).get("1")
    if dq:
        nbytes = sum(n * k * (0.5 + 1 / 32 + 2) for n, k in (SHAPES[s] for s in shapes))
        gbps = nbytes / (dq * 1e-6) / 1e9
        derived["dequant"] = {
            "us": dq,
            "GBps": round(gbps, 1),
            "fraction_of_copy_bw": round(gbps / copy_bw, 3),
        }
    pr = sums.get("sharq_prep", {})
    if pr:
        derived["prep_share_of_sharq"] = {
            m: round(pr[m] / sums["sharq"][m], 3) for m in pr if sums.get("sharq", {}).get(m)
        }
        big = [m for m in pr if int(m) >= 1024]
        derived["prep_GBps"] = {
            m: round(sum(4 * int(m) * SHAPES[s][1] for s in shapes) / (pr[m] * 1e-6) / 1e9, 1)
            for m in big
        }
    if "fp8" in sums and "sharq" in sums:
        derived["fp8_over_sharq"] = {
            m: round(sums["fp8"][m] / sums["sharq"][m], 3)
            for m in sums["sharq"]
            if m in sums["fp8"]
        }
    if "sharq_mma" in sums and "sharq_dqmm" in sums:
        derived["mma_over_dqmm_time"] = {
            m: round(sums["sharq_mma"][m] / sums["sharq_dqmm"][m], 3)
            for m in sums["sharq_mma"]
            if m in sums["sharq_dqmm"]
        }
    info.update(
        {
            "derived": derived,
            "sum_us": sums,
            "detail_us": detail,
            "m1_weight_bandwidth": bw,
            "fp4_weight_MB": round(fp4_bytes / 1e6, 1),
            "errors": errors,
            "budget_skipped": skipped,
        }
    )
    return info


PREP_CONFIGS = {  # name: (chunks a thread, CTAs a row); "auto" = the op's own dispatch
    "auto": None,
    "v1": (1, 1),
    "v2": (2, 1),
    "v4": (4, 1),
    "v8": (8, 1),
    "v1_cl2": (1, 2),
    "v1_cl4": (1, 4),
    "v1_cl8": (1, 8),
    "v2_cl8": (2, 8),
}


def prep_sweep(args, t_start) -> dict:
    """The preparation kernel's configurations (for the dispatch thresholds in prep.cu)."""
    res: dict[str, dict[str, dict[str, float]]] = {}
    errs: dict[str, str] = {}
    for k in (4096, 14336):
        for m in (1, 16, 64, 128, 256, 1024, 4096, 16384):
            if time.time() - t_start > args.budget_s + 30 and m >= 1024:
                continue
            copies = max(1, min(MAX_COPIES, math.ceil(L2_ROTATE_BYTES / (4 * m * k))))
            xs = [heavy(m, k) for _ in range(copies)]
            outs = [torch.empty_like(x) for x in xs]
            for name, cfg in PREP_CONFIGS.items():
                if cfg is not None:
                    v, cl = cfg
                    if (cl > 1 and m > 256) or not dispatch.prep_config_holds(k, v, cl):
                        continue

                def fn(i, cfg=cfg, xs=xs, outs=outs):
                    if cfg is None:
                        return torch.ops.sharq.prepare(xs[i], "nvfp4", "4:8-pairs")
                    torch.ops.sharq_C.prep_cfg(xs[i], outs[i], *dispatch.prep_values("nvfp4", "4:8-pairs"), *cfg)
                    return outs[i]

                try:
                    us = time_graph(fn, copies, reps=args.reps)
                    res.setdefault(f"K={k}", {}).setdefault(f"M={m}", {})[name] = round(us, 2)
                except Exception as e:
                    errs[f"{k}/{m}/{name}"] = f"{type(e).__name__}: {e}"
            line = res.get(f"K={k}", {}).get(f"M={m}", {})
            print(
                f"  prep K={k} M={m}: " + ", ".join(f"{a}={b:.1f}" for a, b in line.items()),
                flush=True,
            )
    if errs:
        res["errors"] = {"all": errs}  # type: ignore[dict-item]
    return res


NORM_SWEEP_MS = (64, 256, 512, 1024, 4096, 16384)


def _norm_calls(m: int, k: int, eps: float, codes, copies: int) -> dict:
    """name -> fn(i) over `copies` sets of fresh rows, residuals and outputs (norm_sweep)."""
    xs = [heavy(m, k) for _ in range(copies)]
    rs = [heavy(m, k) for _ in range(copies)]
    w = heavy(1, k).reshape(k)
    outs = [torch.empty_like(x) for x in xs]
    routs = [torch.empty_like(x) for x in xs]

    def sharq(v):
        def fn(i):
            torch.ops.sharq_C.prep_norm(xs[i], rs[i], routs[i], w, eps, outs[i], *codes, v)
            return outs[i]

        return fn

    fns = {"v1": sharq(1), "v2": sharq(2), "auto": sharq(0)}
    if Vllm.ok:
        qs = [torch.empty(m, k, dtype=torch.float8_e4m3fn, device=DEVICE) for _ in range(copies)]
        sc = [torch.empty(m, 1, dtype=torch.float32, device=DEVICE) for _ in range(copies)]
        fns["vllm_fused_add_rms_norm"] = lambda i: torch.ops._C.fused_add_rms_norm(xs[i], rs[i], w, eps)
        fns["vllm_fp8_add_rms_norm_quant"] = lambda i: torch.ops._C.rms_norm_dynamic_per_token_quant(
            qs[i], xs[i], w, sc[i], eps, None, rs[i]
        )
    return fns


def norm_sweep(args, t_start) -> dict:
    """The RMSNorm (+ residual add) + preparation kernel at K = 4096 (the qkv / gate_up inputs
    of Llama-3.1-8B): one and two chunks a thread forced, the op's own choice, and for scale
    vLLM's own kernels on the same rows: fused_add_rms_norm (what SharQ's kernel replaces, in
    place) and FP8's fused add-RMSNorm + per-token quantization (rms_norm_dynamic_per_token_quant,
    what vLLM's fusion pass puts before an FP8 linear). The data behind prep.cu's launch_norm."""
    k, eps = 4096, 1e-5
    codes = dispatch.prep_values("nvfp4", "4:8-pairs")
    res: dict[str, dict[str, float]] = {}
    errs: dict[str, str] = {}
    for m in NORM_SWEEP_MS:
        if time.time() - t_start > args.budget_s + 30 and m >= 1024:
            continue
        copies = max(1, min(MAX_COPIES, math.ceil(L2_ROTATE_BYTES / (8 * m * k))))
        fns = _norm_calls(m, k, eps, codes, copies)
        for name, fn in fns.items():
            try:
                res.setdefault(f"M={m}", {})[name] = round(time_graph(fn, copies, reps=args.reps), 2)
            except Exception as e:
                errs[f"{m}/{name}"] = f"{type(e).__name__}: {e}"
        line = res.get(f"M={m}", {})
        print(f"  norm+prep K={k} M={m}: " + ", ".join(f"{a}={b:.1f}" for a, b in line.items()), flush=True)
    if errs:
        res["errors"] = errs  # type: ignore[assignment]
    return res


GEMM_SWEEP_MS = (1, 8, 16, 17, 24, 32, 64, 128, 256, 512, 1024)


def gemm_variant_sweep(args, t_start) -> dict:
    """Every forced GEMM kernel at each small M (the data behind the decode choice in gemm.cu):
    per shape, M and kernel, "gemm" = the GEMM alone on a prepared x_hat and "prep+gemm" = the
    preparation kernel then the GEMM (as the op runs them: programmatic dependent launch lets the
    GEMM start streaming weights while the preparation runs), plus the sums over the shapes."""
    res: dict[str, dict] = {}
    errs: dict[str, str] = {}
    for sname, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=DEVICE, dtype=torch.float32) * 0.02
        base = ops.pack_weight(quantize_weight(w, 32), DEVICE)
        copies = max(1, min(MAX_COPIES, math.ceil(L2_ROTATE_BYTES / max(1, state_bytes({"p": base})))))
        states = [base] + [clone_state({"p": base})["p"] for _ in range(copies - 1)]
        for m in args.gemm_sweep_ms:
            if time.time() - t_start > args.budget_s + 120:
                errs.setdefault("budget", "skipped after the budget")
                continue
            xs = [heavy(m, k) for _ in range(copies)]
            xh = [torch.ops.sharq.prepare(x, "nvfp4", "4:8-pairs") for x in xs]
            outs = [torch.empty((m, n), dtype=xs[0].dtype, device=DEVICE) for _ in range(copies)]
            line = res.setdefault(sname, {}).setdefault(f"M={m}", {})
            for name, variant in dispatch.GEMM_VARIANTS.items():
                if m > dispatch.GEMM_VARIANT_MAX_M.get(name, m) or name not in args.gemm_variants:
                    continue

                def run_variant(x_hat, i, variant=variant, sts=states, outs=outs):
                    p = sts[i]
                    torch.ops.sharq_C.gemm_mma_cfg(
                        x_hat, p.qweight, p.scales, p.tensor_scale, None, outs[i], p.n_pad, p.block, variant
                    )
                    return outs[i]

                def gemm(i, run_variant=run_variant, xh=xh):
                    return run_variant(xh[i], i)

                def prep_gemm(i, run_variant=run_variant, xs=xs):
                    return run_variant(torch.ops.sharq.prepare(xs[i], "nvfp4", "4:8-pairs"), i)

                try:
                    line[name] = {
                        "gemm": round(time_graph(gemm, copies, reps=args.reps), 2),
                        "prep+gemm": round(time_graph(prep_gemm, copies, reps=args.reps), 2),
                    }
                except Exception as e:
                    errs[f"{sname}/{m}/{name}"] = f"{type(e).__name__}: {e}"
            print(f"  gemm {sname} M={m}: " + ", ".join(
                f"{a}={b['gemm']:.1f}/{b['prep+gemm']:.1f}" for a, b in line.items()), flush=True)
            del xs, xh, outs
        del base, states
        torch.cuda.empty_cache()
    sums: dict[str, dict[str, dict[str, float]]] = {}
    for m in args.gemm_sweep_ms:
        for name in dispatch.GEMM_VARIANTS:
            vals = [res.get(s, {}).get(f"M={m}", {}).get(name) for s in SHAPES]
            if all(v is not None for v in vals):
                sums.setdefault(f"M={m}", {})[name] = {
                    key: round(sum(v[key] for v in vals), 2) for key in ("gemm", "prep+gemm")  # type: ignore[index]
                }
        if f"M={m}" in sums:
            print(f"  gemm sum M={m}: " + ", ".join(
                f"{a}={b['gemm']:.1f}/{b['prep+gemm']:.1f}" for a, b in sums[f"M={m}"].items()), flush=True)
    res["sum"] = sums
    if errs:
        res["errors"] = errs
    return res


def print_table(res: dict) -> str:
    sums = res["sum_us"]
    ms = sorted({int(m) for d in sums.values() for m in d})
    lines = []
    lines.append(
        f"SharQ kernels on {res['device']} (torch {res['torch']}, vllm {res['vllm']}); sums over 4 {res.get('model', 'Llama-3.1-8B')} linears, us"
    )
    hdr = f"{'method':18s}" + "".join(f"{m:>10d}" for m in ms)
    lines.append(hdr)
    for meth, d in sums.items():
        lines.append(f"{meth:18s}" + "".join(f"{d.get(str(m), float('nan')):10.1f}" for m in ms))
    for base in ("fp8", "bf16", "marlin_fp4"):
        if base in sums:
            for meth in ("sharq", "sharq_gemm"):
                if meth in sums:
                    row = []
                    for m in ms:
                        a, b = sums[base].get(str(m)), sums[meth].get(str(m))
                        row.append(f"{(a / b if a and b else float('nan')):10.2f}")
                    lines.append(f"{base + '/' + meth:18s}" + "".join(row))
    for meth, v in res.get("m1_weight_bandwidth", {}).items():
        lines.append(
            f"M=1 {meth}: {v['GBps']:.0f} GB/s = {100 * v['fraction_of_copy_bw']:.0f}% of copy bandwidth ({res['copy_bw_GBps']:.0f} GB/s)"
        )
    for key, v in res.get("derived", {}).items():
        lines.append(f"{key}: {v}")
    for kk, byk in res.get("prep_configs_us", {}).items():
        if kk == "errors":
            continue
        for mm, cfgs in byk.items():
            lines.append(f"prep {kk} {mm}: " + ", ".join(f"{a}={b:.1f}" for a, b in cfgs.items()))
    for mm, cfgs in res.get("norm_configs_us", {}).items():
        if mm != "errors":
            lines.append(f"norm+prep K=4096 {mm}: " + ", ".join(f"{a}={b:.1f}" for a, b in cfgs.items()))
    if res.get("vllm_error"):
        lines.append(f"vLLM baselines skipped: {res['vllm_error'][:200]}")
    if res.get("errors"):
        lines.append(f"errors: {len(res['errors'])} (see JSON)")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print(f"no plot: {e}")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for meth, d in res["sum_us"].items():
        ms = sorted(int(m) for m in d)
        axes[0].plot(ms, [d[str(m)] for m in ms], marker="o", label=meth)
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("M (tokens)")
    axes[0].set_ylabel(f"us, sum of 4 {res.get('model', 'Llama-3.1-8B')} linears")
    axes[0].legend()
    axes[0].grid(True, which="both", alpha=0.3)
    base = res["sum_us"].get("fp8") or res["sum_us"].get("bf16")
    bname = "fp8" if "fp8" in res["sum_us"] else "bf16"
    if base:
        for meth, d in res["sum_us"].items():
            ms = sorted(int(m) for m in d if str(m) in base)
            axes[1].plot(ms, [base[str(m)] / d[str(m)] for m in ms], marker="o", label=meth)
        axes[1].axhline(1.0, color="k", lw=0.8)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("M (tokens)")
        axes[1].set_ylabel(f"speed-up vs {bname} (higher is better)")
        axes[1].legend()
        axes[1].grid(True, which="both", alpha=0.3)
    fig.suptitle(f"SharQ kernels, {res['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    global DEVICE, MODEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument(
        "--model", default=MODEL,
        help="whose four linears to time: a folder of benchmarks/serving/configs (e.g. Qwen2.5-7B); "
        f"default {DEFAULT_MODEL}",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting new measurements after this"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="M=1,4096; bf16, sharq, sharq_gemm, paths, vLLM if present",
    )
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument(
        "--out-only", action="store_true",
        help="write the JSON under --out only, not benchmarks/results/ (A/B runs: tools/gpu/ab_libraries.sh)",
    )
    ap.add_argument(
        "--no-prep-sweep", action="store_true", help="skip the prep configuration sweep"
    )
    ap.add_argument(
        "--gemm-sweep", action="store_true",
        help="every forced GEMM kernel (dispatch.GEMM_VARIANTS: auto, stream, tile, wgmma, wgmmars) at M <= 1024, "
        "alone and after the preparation",
    )
    ap.add_argument(
        "--gemm-variants", default=",".join(dispatch.GEMM_VARIANTS),
        help="the kernels --gemm-sweep forces (names of dispatch.GEMM_VARIANTS; default: all)",
    )
    ap.add_argument(
        "--norm-sweep", action="store_true",
        help="the RMSNorm + preparation kernel at K = 4096, 1 / 2 chunks a thread, against vLLM's norm kernels",
    )
    ap.add_argument(
        "--gemm-sweep-ms", default=",".join(map(str, GEMM_SWEEP_MS)), help="the M values of --gemm-sweep"
    )
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny run on CPU (reference ops) to test this script",
    )
    args = ap.parse_args()
    if args.out_only and not args.out:
        ap.error("--out-only needs --out (the folder the JSON goes to instead of benchmarks/results/)")
    args.gemm_sweep_ms = [int(m) for m in str(args.gemm_sweep_ms).split(",") if m]
    args.gemm_variants = [v for v in str(args.gemm_variants).split(",") if v]
    unknown = sorted(set(args.gemm_variants) - set(dispatch.GEMM_VARIANTS))
    if unknown:
        ap.error(f"--gemm-variants: unknown {unknown} (known: {', '.join(dispatch.GEMM_VARIANTS)})")
    if args.model != MODEL:
        try:
            SHAPES.update(model_shapes(args.model))
        except (OSError, KeyError) as e:
            ap.error(f"--model {args.model}: no usable benchmarks/serving/configs/{args.model}/config.json ({e})")
        MODEL = args.model
    if args.cpu_smoke:
        DEVICE = "cpu"
        SHAPES.clear()
        SHAPES.update({"qkv": (96, 128), "o": (64, 128), "gate_up": (160, 128), "down": (64, 256)})
        MODEL = "tiny (--cpu-smoke)"
        args.ms, args.reps = "1,5", 1
    if args.quick:
        args.ms = "1,4096"
        args.reps = 10
        args.no_prep_sweep = True
    res = run(args)
    table = print_table(res)
    res["table"] = table
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # another model's run beside the Llama-3.1-8B one, not over it
    stem = f"kernels-{res['card']}" + ("" if args.model == DEFAULT_MODEL else f"-{args.model}")
    names = [] if args.cpu_smoke or args.out_only else [os.path.join(root, "results", f"{stem}.json")]
    if args.out:
        names.append(os.path.join(args.out, f"{stem}.json"))
    for p in names:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            json.dump(res, f, indent=1)
        print(f"json: {p}")
    try:
        plot(
            res,
            os.path.join(args.out or os.path.join(root, "results"), f"{stem}.png"),
        )
    except Exception as e:
        print(f"plot failed: {e}")
    if args.cpu_smoke and not res["sum_us"].get("sharq"):
        raise SystemExit("cpu smoke: no sharq sums")
    print("\n" + table)


if __name__ == "__main__":
    main()
