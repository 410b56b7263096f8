"""Run the small-M GEMM (M rows, one Llama-3.1-8B shape) a few times, for a profiler:

    ncu --clock-control none --kernel-name regex:gemm_stream --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy \
        python3 tools/gpu/profile_decode_gemm.py [--shape gate_up] [--m 1]

(regex:gemm_wgmma where the op picks the wgmma kernels: dispatch.auto_variant). --variant forces one kernel
(sharq_kernels.h GemmVariant: 1 stream, 2 tile, 3 wgmma). docs/KERNELS.md quotes such profiles
(tools/gpu/profile_stalls.sh: stall reasons).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.kernels import bench_kernels
from sharq_vllm import ops
from sharq_vllm.reference import quantize_weight

SHAPES = bench_kernels.SHAPES  # the kernel benchmark's model (Llama-3.1-8B): name -> (N, K)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gate_up", choices=sorted(SHAPES))
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--variant", type=int, default=0, help="0: the op's own choice")
    a = ap.parse_args()
    n, k = SHAPES[a.shape]
    p = ops.pack_weight(quantize_weight(torch.randn(n, k, device="cuda") * 0.02, 32), "cuda")
    x = torch.ops.sharq.prepare(torch.randn(a.m, k, device="cuda", dtype=torch.bfloat16), "nvfp4", "4:8-pairs")
    y = torch.empty((a.m, n), dtype=x.dtype, device="cuda")
    for _ in range(a.runs):
        if a.variant:
            torch.ops.sharq_C.gemm_mma_cfg(x, p.qweight, p.scales, p.tensor_scale, None, y, p.n_pad, p.block, a.variant)
        else:
            ops.run_gemm_kernel("mma", x, p)
    torch.cuda.synchronize()
    print(f"ran {a.runs}x {a.shape} M={a.m}")


if __name__ == "__main__":
    main()
