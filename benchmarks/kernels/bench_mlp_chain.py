"""The MLP block of a decode step as SharQ serves it, SiLU * mul fused into the preparation or not.

Decides ``SHARQ_FUSE_SILU`` (sharq_vllm/vllm_plugin/fusion.py) at the kernel level: in a
Llama-style MLP the gate_up GEMM's output [M, 2d] goes through SiLU * mul to the down projection's
preparation and GEMM. vLLM's graph (the compile pass off) runs Inductor's SiLU * mul kernel, then
the preparation, then the GEMM; with the pass on, one kernel (``sharq::prepare_silu_mul``) reads
[gate | up] and writes x_hat. Chains timed, Llama-3.1-8B shapes (gate_up 28672 x 4096, down
4096 x 14336), bf16, nvfp4 4:8-pairs:

  chain_unfused   gate_up GEMM -> torch.compile'd silu(g) * u (Inductor's Triton kernel, as in
                  vLLM) -> preparation -> down GEMM
  chain_fused     gate_up GEMM -> prepare_silu_mul -> down GEMM
  act_unfused     the compiled SiLU * mul, then the preparation (on a fixed gate_up output)
  act_fused       prepare_silu_mul alone
  silu / prep     each kernel of act_unfused alone

Timing as bench_kernels.py: one CUDA graph of R calls over R copies of the weights and inputs
(>= 256 MiB touched a replay for the chains), median over replays / R. JSON:
``--out``/mlp-chain-<card>.json (and the table on stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform

import torch

from benchmarks.kernels import bench_kernels as bk
from sharq_vllm import ops
from sharq_vllm.producers import silu_and_mul
from sharq_vllm.reference import quantize_weight

FMT, PATTERN = "nvfp4", "4:8-pairs"
HIDDEN, INTER = 4096, 14336


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,8,16,32,64,128,256")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (reference ops): tests this script")
    args = ap.parse_args()
    global HIDDEN, INTER
    dev = "cuda"
    if args.cpu_smoke:
        bk.DEVICE = dev = "cpu"
        HIDDEN, INTER, args.ms, args.reps = 128, 256, "1,5", 1
    torch.manual_seed(0)
    dt = torch.bfloat16
    # vLLM's SiluAndMul as Inductor compiles it (the unfused path); eager on the CPU smoke run
    compiled = torch.compile(silu_and_mul, dynamic=False, fullgraph=True) if dev == "cuda" else silu_and_mul
    w_gu = bk.heavy(2 * INTER, HIDDEN, dt) * 0.02
    w_d = bk.heavy(HIDDEN, INTER, dt) * 0.02
    p_gu = ops.pack_weight(quantize_weight(w_gu, block=32), dev)
    p_d = ops.pack_weight(quantize_weight(w_d, block=32), dev)
    wbytes = p_gu.nbytes + p_d.nbytes
    copies = max(2, min(bk.MAX_COPIES, math.ceil(bk.L2_ROTATE_BYTES / wbytes)))
    gus = [p_gu] + [bk.clone_state({"p": p_gu})["p"] for _ in range(copies - 1)]
    ds = [p_d] + [bk.clone_state({"p": p_d})["p"] for _ in range(copies - 1)]
    res: dict = {
        "what": __doc__.split("\n\n")[0],
        "card": bk.card_name(), "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "timing": f"CUDA graph of R calls (R = {copies} for the chains, 24 for the act rows), median of {args.reps} replays / R",
        "us": {},
    }
    def rows_at(m: int) -> dict[str, float]:
        xh = [torch.ops.sharq.prepare(bk.heavy(m, HIDDEN, dt), FMT, PATTERN) for _ in range(copies)]
        hs = [bk.heavy(m, 2 * INTER, dt) for _ in range(24)]
        acts = [compiled(h) for h in hs]
        return {
            "chain_unfused": bk.time_graph(
                lambda i: ops.sharq_linear(compiled(ops.sharq_gemm(xh[i], gus[i])), ds[i], None, FMT, PATTERN),
                copies, args.reps),
            "chain_fused": bk.time_graph(
                lambda i: ops.sharq_gemm(torch.ops.sharq.prepare_silu_mul(ops.sharq_gemm(xh[i], gus[i]), FMT, PATTERN), ds[i]),
                copies, args.reps),
            "act_unfused": bk.time_graph(lambda i: torch.ops.sharq.prepare(compiled(hs[i]), FMT, PATTERN), 24, args.reps),
            "act_fused": bk.time_graph(lambda i: torch.ops.sharq.prepare_silu_mul(hs[i], FMT, PATTERN), 24, args.reps),
            "silu": bk.time_graph(lambda i: compiled(hs[i]), 24, args.reps),
            "prep": bk.time_graph(lambda i: torch.ops.sharq.prepare(acts[i], FMT, PATTERN), 24, args.reps),
        }

    for m in [int(v) for v in args.ms.split(",") if v]:
        rows = rows_at(m)
        res["us"][str(m)] = {k: round(v, 3) for k, v in rows.items()}
        print(f"M={m:4d} " + "  ".join(f"{k} {v:8.2f}" for k, v in rows.items()), flush=True)
    if args.cpu_smoke:
        return
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"mlp-chain-{res['card']}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"json: {path}")


if __name__ == "__main__":
    main()
