"""How much faster is a SharQ GEMM when (part of) its weights already sit in L2?

The bound on prefetching a linear's weights into L2 while the GPU's memory is idle (attention at
small batches, a preparation kernel): each case below sets up the L2 state, then times one GEMM
(the op's own kernel for M rows, one Llama-3.1-8B linear) between CUDA events; medians over reps.

  cold    read a 512 MB scrub buffer (evicts L2), then x_hat (as serving has it), then the GEMM
  pre     scrub, read the GEMM's packed weights and scales (a torch reduction), then the GEMM
  pre@f   scrub, read the first fraction f of its strips (the strips its CTAs take first), GEMM
  hot     the GEMM right after the same GEMM

    python3 tools/gpu/probe_l2_weights.py [--m 1,16,32,64] [--reps 40] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from benchmarks.kernels import bench_kernels
from sharq_vllm import ops
from sharq_vllm.reference import quantize_weight

SHAPES = bench_kernels.SHAPES  # the kernel benchmark's model (Llama-3.1-8B): name -> (N, K)


def measure(p: ops.PackedWeight, x: torch.Tensor, scrub: torch.Tensor, fracs: list[float], reps: int) -> dict:
    """Median GEMM time (us) of each case for one packed weight and one x_hat."""

    def gemm() -> None:
        ops.run_gemm_kernel("mma", x, p)

    def touch(f: float) -> None:  # the first fraction f of the strips (and of the scales) into L2
        p.qweight[: max(1, int(p.qweight.shape[0] * f))].sum()
        p.scales[: max(1, int(p.scales.shape[0] * f))].sum()

    def evict() -> None:  # x_hat stays in L2 (serving's preparation has just written it)
        scrub.sum()
        x.sum()

    cases = {"cold": evict, "pre": lambda: (evict(), touch(1.0)), "hot": gemm}
    for f in fracs:
        cases[f"pre@{f}"] = lambda f=f: (evict(), touch(f))
    res = {}
    for cname, setup in cases.items():
        ts = []
        for _ in range(reps):
            setup()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(20000)  # ~10 us: the GEMM launches into a busy stream
            e0.record()
            gemm()
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) * 1000.0)
        res[cname] = round(statistics.median(ts), 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,16,32,64")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--fractions", default="0.25,0.5")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    scrub = torch.ones(512 << 20 >> 2, dtype=torch.float32, device="cuda")
    out: dict = {"card": props.name, "l2_bytes": props.L2_cache_size, "torch": torch.__version__, "us": {}}
    print(f"{props.name}: L2 {props.L2_cache_size / 2**20:.1f} MiB", flush=True)
    fracs = [float(f) for f in a.fractions.split(",") if f]
    for name, (n, k) in SHAPES.items():
        p = ops.pack_weight(quantize_weight(torch.randn(n, k, device="cuda") * 0.02, 32), "cuda")
        wbytes = p.qweight.numel() * p.qweight.element_size() + p.scales.numel() * p.scales.element_size()
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.ops.sharq.prepare(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), "nvfp4", "4:8-pairs")
            res = measure(p, x, scrub, fracs, a.reps)
            out["us"][f"{name}/M={m}"] = res | {"weight_MB": round(wbytes / 1e6, 2)}
            print(f"{name:8s} M={m:3d} ({wbytes / 1e6:5.1f} MB): "
                  + "  ".join(f"{c}={v:.2f}" for c, v in res.items()), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
