"""GPU probe: the GEMM kernels at 17..32 rows per Llama-3.1-8B linear, with x_hat in rows or in
fragment order (GEMM alone, CUDA graph over rotating weight copies, as bench_kernels times).

    SHARQ_EXT_LIB=... python3 tools/gpu/probe_stream_rows.py [--ms 24,32] [--rounds 3] [--out F.json]

Per layer and M: "auto" (the automatic kernel with the layer's dispatch.xhat_fragment_limit, what
serving runs), "stream_rows" / "stream_frag" (the stream kernel forced, x_hat in rows / in fragment
order) and, where the automatic kernel is not the stream kernel, "wgmma" (forced). Run it with two
libraries (e.g. one built with EXTRA_NVFLAGS=-DSHARQ_STREAM_WAVE_MT2=0, whose stream kernel runs
the wave rule's layers as one 32-row tile) to compare kernel configurations."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import torch

from benchmarks.kernels.bench_kernels import (
    L2_ROTATE_BYTES,
    MAX_COPIES,
    SHAPES,
    clone_state,
    heavy,
    time_graph,
)
from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.kernels.layout import xhat_to_fragments
from sharq_vllm.reference import quantize_weight


def _forced(ps: list, xs: list, outs: list, variant: int, x_frag: int) -> Callable[[int], torch.Tensor]:
    def f(i: int) -> torch.Tensor:
        p = ps[i]
        torch.ops.sharq_C.gemm_mma_cfg(xs[i], p.qweight, p.scales, p.tensor_scale, None, outs[i],
                                       p.n_pad, p.block, variant, x_frag)
        return outs[i]
    return f


def _auto(ps: list, xs: list, x_frag: int) -> Callable[[int], torch.Tensor]:
    return lambda i: ops.run_gemm(xs[i], ps[i], None, x_frag=x_frag)


def measure(base: ops.PackedWeight, m: int, rounds: int, sms: int) -> dict:
    k = base.k
    wbytes = base.qweight.numel() * base.qweight.element_size() + base.scales.numel()
    copies = max(1, min(MAX_COPIES, math.ceil(L2_ROTATE_BYTES / (wbytes + m * k * 2))))
    ps = [base] + [clone_state({"p": base})["p"] for _ in range(copies - 1)]
    rows = [torch.ops.sharq.prepare(heavy(m, k), "nvfp4", "4:8-pairs") for _ in range(copies)]
    # fragment order exists for whole 8-row groups up to 32 rows (dispatch.xhat_fragment_rows)
    frag = dispatch.xhat_fragment_rows(m, dispatch.XHAT_FRAGMENT_LIMITS[-1])
    frags = [xhat_to_fragments(x) for x in rows] if frag else rows
    outs = [torch.empty((m, base.n), dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
    limit = dispatch.xhat_fragment_limit(base.n_pad, sms)
    variants = dispatch.GEMM_VARIANTS
    cases = {
        "auto": _auto(ps, frags if dispatch.xhat_fragment_rows(m, limit) else rows, limit),
        "stream_rows": _forced(ps, rows, outs, variants["stream"], 0),
    }
    if frag:
        cases["stream_frag"] = _forced(ps, frags, outs, variants["stream"], 32)
    if dispatch.auto_variant(m, base.n_pad, sms) != "stream":
        cases["wgmma"] = _forced(ps, rows, outs, variants["wgmma"], 0)
    out: dict = {}
    for case, fn in cases.items():
        try:
            out[case] = [round(time_graph(fn, copies), 3) for _ in range(rounds)]
        except Exception as e:  # a refused configuration: recorded, not fatal
            out[case] = f"{type(e).__name__}: {e}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="24,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sms = dispatch.sm_count(torch.device("cuda"))
    res: dict = {"device": torch.cuda.get_device_name(), "sms": sms, "us": {}}
    for name, (n, k) in SHAPES.items():
        base = ops.pack_weight(quantize_weight(heavy(n, k) * 0.02, block=32), "cuda")
        for m in (int(v) for v in args.ms.split(",")):
            for case, us in measure(base, m, args.rounds, sms).items():
                res["us"][f"{name}/M={m}/{case}"] = us
                print(f"{name:8s} M={m:3d} {case:12s} {us}", flush=True)
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
