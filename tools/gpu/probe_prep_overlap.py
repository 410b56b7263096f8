"""How much of the preparation stays exposed in front of a decode-row GEMM, per preparation
configuration?

The preparation kernel triggers its dependents at its start and the GEMM kernels start under it
(programmatic dependent launch), loading weights until `griddepcontrol.wait`. Yet the op (prep +
GEMM) took 2.0 / 7.9 / 8.3 us longer than its GEMM alone at M = 1 / 16 / 64 over the four
Llama-3.1-8B linears in session 39's benchmark (`git show bca153b:benchmarks/results/kernels-H200.json`),
more than the weight loads hide; session 42's findings: kernels-H200-pre2.json. A preparation CTA
holds an SM's registers, so the GEMM CTAs meant for that SM (2 stream CTAs or 1 wgmma CTA fill
its register file) start only when it exits, and a split-K cluster needs all of its SMs free at
once. This times, in one CUDA graph of R calls over R weight / input copies (bench_kernels'
method), for each layer and M:

  gemm          the op's GEMM kernel alone on a prepared x_hat (`run_gemm_kernel("mma")`)
  prep[cfg]     the preparation alone in configuration cfg (chunks a thread, CTAs a row)
  pair[cfg]     that preparation, then the GEMM on its output (the op's sequence)
  exposed[cfg]  pair - gemm

With --producers serving, the preparation is the op serving runs before each linear instead
(its automatic configuration, "serving"): qkv and gate_up after the residual add + RMSNorm
(`sharq::prepare_add_rms_norm`), down after SiLU * mul (`sharq::prepare_silu_mul`), o plain;
with --configs also each of those kernels forced into each configuration (the RMSNorm kernel
only where dispatch.prep_norm_config_holds says it holds the row).

    python3 tools/gpu/probe_prep_overlap.py [--m 1,8,16,32,64,128] [--reps 20] [--json OUT]
        [--configs auto,v1,...] [--producers plain|serving]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from benchmarks.kernels import bench_kernels as bk
from sharq_vllm import ops
from sharq_vllm.kernels import dispatch
from sharq_vllm.reference import quantize_weight

FMT, PATTERN = "nvfp4", "4:8-pairs"


def configs(k: int, m: int, only: str = "") -> dict[str, tuple[int, int] | None]:
    """The preparation configurations that hold rows of k channels, at most 2 chunks a thread
    (the decode-row range; cl > 1 only up to 64 rows, the kernel's cluster range); `only`: a
    comma-separated subset of their names."""
    out: dict[str, tuple[int, int] | None] = {"auto": None}
    for name, cfg in bk.PREP_CONFIGS.items():
        if cfg is None or (cfg[1] > 1 and m > 64) or cfg[0] > 2:
            continue
        if dispatch.prep_config_holds(k, *cfg):
            out[name] = cfg
    return {c: v for c, v in out.items() if not only or c in only.split(",")}


def serving_producer(name: str, m: int, k: int, copies: int, cfg=None):
    """The preparation serving runs before layer `name` (prep(i) -> x_hat), on fresh inputs;
    cfg (chunks a thread, CTAs a row) forces the kernel's configuration."""
    vals = dispatch.prep_values(FMT, PATTERN)
    if name == "down":  # [gate | up] rows, 2k wide
        gus = [bk.heavy(m, 2 * k) for _ in range(copies)]
        if cfg is None:
            return lambda i: torch.ops.sharq.prepare_silu_mul(gus[i], FMT, PATTERN)
        outs = [torch.empty(m, k, dtype=g.dtype, device=g.device) for g in gus]

        def forced(i):
            torch.ops.sharq_C.prep_silu_mul(gus[i], outs[i], *vals, *cfg)
            return outs[i]

        return forced
    xs = [bk.heavy(m, k) for _ in range(copies)]
    outs = [torch.empty_like(x) for x in xs]
    if name == "o":
        if cfg is None:
            return lambda i: torch.ops.sharq.prepare(xs[i], FMT, PATTERN)

        def plain(i):
            torch.ops.sharq_C.prep_cfg(xs[i], outs[i], *vals, *cfg)
            return outs[i]

        return plain
    rs = [bk.heavy(m, k) for _ in range(copies)]
    # a norm weight a copy: serving's 32 layers each read their own, out of L2 by then
    ws = [bk.heavy(1, k).reshape(k) for _ in range(copies)]
    if cfg is None:
        norm = torch.ops.sharq.prepare_add_rms_norm
        return lambda i: norm(xs[i], rs[i], ws[i], 1e-5, FMT, PATTERN)[0]
    routs = [torch.empty_like(x) for x in xs]

    def norm_forced(i):
        torch.ops.sharq_C.prep_norm(xs[i], rs[i], routs[i], ws[i], 1e-5, outs[i], *vals, *cfg)
        return outs[i]

    return norm_forced


def measure(
    name: str, base: ops.PackedWeight, m: int, reps: int, only: str = "", producers: str = "plain"
) -> dict[str, float]:
    """gemm, prep[cfg], pair[cfg], exposed[cfg] (us) for layer `name` (base: its packed weight)
    at m rows; producers "serving": one configuration, "serving", the op serving runs."""
    n, k = bk.SHAPES[name]
    vals = dispatch.prep_values(FMT, PATTERN)
    copies = max(
        1, min(bk.MAX_COPIES, math.ceil(bk.L2_ROTATE_BYTES / (base.nbytes + 4 * m * (n + k))))
    )
    ps = [base] + [
        ops.pack_weight(quantize_weight(torch.randn(n, k, device="cuda") * 0.02, 32), "cuda")
        for _ in range(copies - 1)
    ]
    xs = [bk.heavy(m, k) for _ in range(copies)]
    hats = [torch.ops.sharq.prepare(x, FMT, PATTERN) for x in xs]
    outs = [torch.empty_like(x) for x in xs]

    def forced(cfg):
        def prep(i):
            if cfg is None:
                return torch.ops.sharq.prepare(xs[i], FMT, PATTERN)
            torch.ops.sharq_C.prep_cfg(xs[i], outs[i], *vals, *cfg)
            return outs[i]

        return prep

    if producers == "serving":
        preps = {"serving": serving_producer(name, m, k, copies)}
        for c, cfg in configs(k, m, only).items():  # the kernel's forced configurations (--configs)
            if cfg is not None and (name not in ("qkv", "gate_up") or dispatch.prep_norm_config_holds(k, *cfg)):
                preps[c] = serving_producer(name, m, k, copies, cfg)
    else:
        preps = {c: forced(cfg) for c, cfg in configs(k, m, only).items()}
    row = {
        "copies": copies,
        "gemm": round(
            bk.time_graph(lambda i: ops.run_gemm_kernel("mma", hats[i], ps[i]), copies, reps), 2
        ),
    }
    for cname, prep in preps.items():
        row[f"prep[{cname}]"] = round(bk.time_graph(prep, copies, reps), 2)
        row[f"pair[{cname}]"] = round(
            bk.time_graph(
                lambda i, prep=prep: ops.run_gemm_kernel("mma", prep(i), ps[i]), copies, reps
            ),
            2,
        )
        row[f"exposed[{cname}]"] = round(row[f"pair[{cname}]"] - row["gemm"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,8,16,32,64,128")
    ap.add_argument("--layers", default=",".join(bk.SHAPES))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--configs", default="", help="only these configurations (e.g. auto)")
    ap.add_argument("--producers", choices=("plain", "serving"), default="plain")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    out: dict = {
        "card": props.name,
        "torch": torch.__version__,
        "shapes": bk.SHAPES,
        "producers": a.producers,
        "us": {},
    }
    for name in a.layers.split(","):
        n, k = bk.SHAPES[name]
        base = ops.pack_weight(quantize_weight(torch.randn(n, k, device="cuda") * 0.02, 32), "cuda")
        for m in [int(v) for v in a.m.split(",")]:
            row = measure(name, base, m, a.reps, a.configs, a.producers)
            out["us"][f"{name}/M={m}"] = row
            print(
                f"{name:8s} M={m:4d} R={row['copies']:2d} gemm={row['gemm']:7.2f}  "
                + "  ".join(
                    f"{key[5:-1]}: {row[key]:.2f}/{row['exposed' + key[4:]]:+.2f}"
                    for key in row
                    if key.startswith("prep[")
                ),
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
