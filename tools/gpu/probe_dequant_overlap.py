"""Does the large-M path's dequantization hide under the activation's producer on a side stream?

At M > 1024 a SharQ linear is producer (add + RMSNorm / SiLU * mul + preparation: issue-bound,
~1.5 TB/s) -> dequantization (memory-bound, 81% of copy bandwidth) -> cuBLAS. The
dequantization reads only the weight, so it can run beside the producer (sharq_vllm/ops.py,
``_DequantOverlap``). This times one decoder layer's four linears in serving's order, eagerly
(as vLLM runs prefill batches above its CUDA-graph sizes), for each mode:

  serial        everything on the caller's stream (ops.DEQUANT_SIDE_STREAM = False)
  side[p]       the dequantization on a side stream of priority p (-1 high, 0 normal)

dequantization grids of D CTAs an SM (SHARQ_DQ_PER_SM; 8 is the kernel's own) and workspace
bounds (ops.DEQUANT_WORKSPACE_BYTES: Llama-3.1-8B's gate_up is 235 MB in bf16), plus the parts
alone (producers, dequantizations). Outputs of every mode are compared bit for bit.

    python3 tools/gpu/probe_dequant_overlap.py [--m 1024,4096,16384] [--iters 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from benchmarks.kernels import bench_kernels as bk
from sharq_vllm import ops
from sharq_vllm.reference import quantize_weight

FMT, PATTERN = "nvfp4", "4:8-pairs"
EPS = 1e-5


def layer_inputs(m: int) -> dict:
    h, ho = bk.SHAPES["qkv"][1], bk.SHAPES["o"][1]
    return {
        "x": bk.heavy(m, h),
        "res": bk.heavy(m, h),
        "attn": bk.heavy(m, ho),  # stands in for attention's output
        "n1": bk.heavy(1, h).reshape(h),
        "n2": bk.heavy(1, h).reshape(h),
    }


def run_layer(inp: dict, w: dict) -> list[torch.Tensor]:
    norm = torch.ops.sharq.prepare_add_rms_norm
    xh, res = norm(inp["x"], inp["res"], inp["n1"], EPS, FMT, PATTERN)
    qkv = ops.run_gemm(xh, w["qkv"], None)
    o = ops.run_gemm(torch.ops.sharq.prepare(inp["attn"], FMT, PATTERN), w["o"], None)
    xh2, res2 = norm(o, res, inp["n2"], EPS, FMT, PATTERN)
    gu = ops.run_gemm(xh2, w["gate_up"], None)
    down = ops.run_gemm(torch.ops.sharq.prepare_silu_mul(gu, FMT, PATTERN), w["down"], None)
    return [qkv, o, gu, down, res2]


def time_eager(fn, iters: int) -> float:
    """Median us of fn() over iters timed calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        fn()
        en.record()
        en.synchronize()
        ts.append(st.elapsed_time(en) * 1e3)
    return statistics.median(ts)


def set_mode(mode: str) -> None:
    ops._overlaps.clear()  # a fresh side stream with the mode's priority
    ops.DEQUANT_SIDE_STREAM = mode != "serial"
    if mode != "serial":
        ops.OVERLAP_PRIORITY = int(mode[5:-1])


def measure(m: int, w: dict, modes: list[str], dqs: list[str], wss: list[str], iters: int) -> dict:
    """Times (us) and bit-equality of every mode x dequantization grid x workspace bound (MiB)
    at m rows (bits compared between modes of one workspace bound: cuBLAS may pick another
    algorithm for a narrower chunk)."""
    inp = layer_inputs(m)
    row: dict = {}
    refs: dict = {}
    for ws_mb in wss:
        ops.DEQUANT_WORKSPACE_BYTES = int(ws_mb) << 20
        for dq in dqs:
            os.environ["SHARQ_DQ_PER_SM"] = dq
            for mode in modes:
                set_mode(mode)
                got = run_layer(inp, w)
                torch.cuda.synchronize()
                ref = refs.setdefault(ws_mb, got)
                key = f"{mode}/dq{dq}/ws{ws_mb}"
                row[key] = round(time_eager(lambda: run_layer(inp, w), iters), 1)
                row[f"{key}/bits_equal"] = all(torch.equal(g, r) for g, r in zip(got, ref, strict=True))
    ops.DEQUANT_WORKSPACE_BYTES = 128 << 20
    for dq in dqs:
        os.environ["SHARQ_DQ_PER_SM"] = dq
        set_mode("serial")  # the dequantizations alone, for the parts
        bufs = {n: torch.empty(p.n_pad, p.k, dtype=torch.bfloat16, device="cuda") for n, p in w.items()}

        def dq_all(bufs=bufs):
            for n, p in w.items():
                torch.ops.sharq_C.dequant(p.qweight, p.scales, bufs[n], p.block)

        row[f"dequant_alone/dq{dq}"] = round(time_eager(dq_all, iters), 1)
    os.environ["SHARQ_DQ_PER_SM"] = "8"
    gu = next(iter(refs.values()))[2]

    def producers():
        norm = torch.ops.sharq.prepare_add_rms_norm
        norm(inp["x"], inp["res"], inp["n1"], EPS, FMT, PATTERN)
        torch.ops.sharq.prepare(inp["attn"], FMT, PATTERN)
        norm(inp["x"], inp["res"], inp["n2"], EPS, FMT, PATTERN)
        torch.ops.sharq.prepare_silu_mul(gu, FMT, PATTERN)

    row["producers_alone"] = round(time_eager(producers, iters), 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1024,4096,16384")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--modes", default="serial,side[-1],side[0]")
    ap.add_argument("--dq", default="8,2", help="dequantization CTAs an SM")
    ap.add_argument("--ws", default="128,256", help="workspace bounds, MiB")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    out: dict = {"card": props.name, "torch": torch.__version__, "shapes": bk.SHAPES, "us": {}}
    w = {
        n: ops.pack_weight(quantize_weight(torch.randn(nn, k, device="cuda") * 0.02, 32), "cuda")
        for n, (nn, k) in bk.SHAPES.items()
    }
    for m in [int(v) for v in a.m.split(",")]:
        row = measure(m, w, a.modes.split(","), a.dq.split(","), a.ws.split(","), a.iters)
        out["us"][f"M={m}"] = row
        print(f"M={m:6d} " + "  ".join(f"{k}={v}" for k, v in row.items() if not k.endswith("bits_equal")), flush=True)
        print("        bits equal: " + str(all(v for k, v in row.items() if k.endswith("bits_equal"))), flush=True)
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
