"""Run the preparation op serving runs before one Llama-3.1-8B linear a few times, for a profiler:

    ncu --clock-control none --kernel-name regex:prep_kernel --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
        python3 tools/gpu/profile_prep.py [--layer down] [--m 1] [--producer serving|plain]

producer "serving": qkv / gate_up after the residual add + RMSNorm (sharq::prepare_add_rms_norm),
down after SiLU * mul (sharq::prepare_silu_mul), o plain; "plain": the preparation alone
(sharq::prepare) on the layer's input width. The serving inputs are probe_prep_overlap.py's
(serving_producer). --cfg V,CL forces the configuration (plain and down only: sharq_C.prep_cfg /
prep_silu_mul). Each kernel runs alone under ncu (no
programmatic-dependent-launch overlap): its own duration, not what it leaves exposed before the
GEMM (tools/gpu/probe_prep_overlap.py).
"""

from __future__ import annotations

import argparse

import torch
from probe_prep_overlap import FMT, PATTERN, serving_producer  # this script's folder

from benchmarks.kernels import bench_kernels as bk
from sharq_vllm import ops
from sharq_vllm.kernels import dispatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", default="down", choices=sorted(bk.SHAPES))
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--producer", default="serving", choices=("serving", "plain"))
    ap.add_argument("--cfg", default="", help="V,CL: an explicit configuration (0,0: auto)")
    ap.add_argument("--runs", type=int, default=6)
    a = ap.parse_args()
    ok, why = ops.kernel_path_available("cuda")  # loads the library (sharq_C ops)
    if not ok:
        raise SystemExit(f"sharq: no kernel path: {why}")
    k = bk.SHAPES[a.layer][1]
    cfg = tuple(int(t) for t in a.cfg.split(",")) if a.cfg else None
    if a.producer == "serving":
        prep = serving_producer(a.layer, a.m, k, 1, cfg)
    else:
        x, out = bk.heavy(a.m, k), torch.empty(a.m, k, dtype=torch.bfloat16, device="cuda")
        vals, (v, cl) = dispatch.prep_values(FMT, PATTERN), cfg or (0, 0)

        def prep(_: int) -> None:
            torch.ops.sharq_C.prep_cfg(x, out, *vals, v, cl)

    for _ in range(a.runs):
        prep(0)
    torch.cuda.synchronize()
    print(f"ran {a.runs}x {a.producer} {a.layer} M={a.m} cfg={a.cfg or 'auto'}")


if __name__ == "__main__":
    main()
