"""Are two builds of the kernel library the same function? Bitwise GEMM outputs, one process a build.

    SHARQ_EXT_LIB=/tmp/v0/libsharq_C.so SHARQ_JIT=0 python3 tools/gpu/gemm_bits.py dump v0.pt
    SHARQ_EXT_LIB=/tmp/v1/libsharq_C.so SHARQ_JIT=0 python3 tools/gpu/gemm_bits.py dump v1.pt
    python3 tools/gpu/gemm_bits.py compare v0.pt v1.pt        # exit 1 unless every output is equal

What it is for: a kernel change meant to keep the bits (a persistent form of a kernel, another
tile order with the same summation order, a new epilogue) is shown to compute exactly what the
tested build computes, at every M bucket the automatic path takes, before an A/B times it
(docs/KERNELS.md, "Measuring a kernel change"). tools/cubin_diff.py says which kernels' machine
code changed; this says whether their outputs did. tools/gpu/ab_libraries.sh's bit test holds the
mma.sync kernels to each other inside one build; this compares two builds.

`dump` runs the automatic GEMM path (`ops.sharq_gemm`: stream, wgmma or dequantize + cuBLAS by M)
and the `mma` path forced (`ops.run_gemm_kernel`) on fixed-seed heavy-tailed inputs, with a bias
on odd M, for the kernel benchmark's model's four linears (Llama-3.1-8B) and three odd shapes (a
partial weight tile, K/64 odd, N not a multiple of 4) at M = 1..4096 across the bucket edges, and
stores each output's SHA-256 and first 4096 values with the library's path and checksum. Needs a
GPU where the kernels run (sm_90).
`compare` names every case whose outputs differ (and how, in the stored values).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks/
from benchmarks.kernels.bench_kernels import DEFAULT_MODEL, model_shapes

# the benchmark's model's four linears (N, K), and three odd shapes
SHAPES = {**model_shapes(DEFAULT_MODEL), "odd_tile": (4000, 1472), "odd_k": (1552, 1472), "odd_n": (1042, 576)}
MS = (1, 8, 16, 17, 32, 33, 64, 65, 128, 129, 200, 256, 300, 512, 513, 768, 1024, 1025, 2048, 4096)


def _weight(n: int, k: int, seed: int):
    from sharq_vllm.reference import quantize_weight

    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(torch.randn(n, k, generator=g))  # heavy-tailed
    return quantize_weight(w.cuda(), 32)


def _rows(n: int, k: int, m: int, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, k, generator=g))
    bias = torch.randn(n, generator=g).to("cuda", torch.bfloat16) if m % 2 else None
    return x.to("cuda", torch.bfloat16), bias


def _record(y: torch.Tensor) -> dict:
    """What a dump keeps of one output: its bytes' SHA-256 (equality) and its first 4096 values
    (to say how a difference looks); whole outputs of the large cases would be gigabytes."""
    y = y.contiguous().cpu()
    return {"shape": tuple(y.shape), "sha256": hashlib.sha256(y.view(torch.int16).numpy().tobytes()).hexdigest(),
            "head": y.flatten()[:4096].clone()}


def _meta(lib: str, device: str, seed: int) -> dict:
    """A dump's provenance, in plain types only: `compare` loads dumps with torch.load's default
    weights_only=True, which refuses other classes (torch.__version__ is a TorchVersion)."""
    md5 = hashlib.md5(Path(lib).read_bytes()).hexdigest() if lib and Path(lib).is_file() else None
    return {"library": lib, "library_md5": md5, "device": str(device), "torch": str(torch.__version__), "seed": seed}


def dump(out: Path, shapes: list[str], ms: list[int], seed: int) -> None:
    from sharq_vllm import ops

    if not torch.cuda.is_available() or not ops.kernel_path_available("cuda"):
        sys.exit("gemm_bits dump: the SharQ kernels do not run here (needs a CUDA device they were built for; "
                 "SHARQ_EXT_LIB names the build): nothing to compare")
    lib = os.environ.get("SHARQ_EXT_LIB", "")
    results: dict[str, dict] = {}
    for si, name in enumerate(shapes):
        n, k = SHAPES[name]
        packed = ops.pack_weight(_weight(n, k, seed + 1000 * si), "cuda")
        for m in ms:
            x, bias = _rows(n, k, m, seed + m)
            results[f"{name} M={m} auto"] = _record(ops.sharq_gemm(x, packed, bias))
            results[f"{name} M={m} mma"] = _record(ops.run_gemm_kernel("mma", x, packed, bias))
        print(f"{name}: {len(ms)} M values", flush=True)
    meta = _meta(lib, torch.cuda.get_device_name(), seed)
    torch.save({"meta": meta, "outputs": results}, out)
    print(f"wrote {out}: {len(results)} outputs ({meta['device']}, {lib or 'JIT build'})")


def compare(a_path: Path, b_path: Path) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    print(f"A: {a['meta']}\nB: {b['meta']}")
    cases = sorted(set(a["outputs"]) | set(b["outputs"]))
    bad = 0
    for case in cases:
        ra, rb = a["outputs"].get(case), b["outputs"].get(case)
        if ra is None or rb is None:
            print(f"MISSING  {case} (only in {'B' if ra is None else 'A'})")
            bad += 1
        elif ra["shape"] != rb["shape"]:
            print(f"DIFFER   {case}: shapes {ra['shape']} / {rb['shape']}")
            bad += 1
        elif ra["sha256"] != rb["sha256"]:
            ha, hb = ra["head"], rb["head"]
            nd = int((ha.view(torch.int16) != hb.view(torch.int16)).sum())
            md = float((ha.float() - hb.float()).abs().nan_to_num(float("inf")).max())
            print(f"DIFFER   {case}: bytes differ; in the first {ha.numel()} values {nd} differ, max |a - b| = {md:.4g}")
            bad += 1
    print(f"{len(cases) - bad} of {len(cases)} outputs bitwise equal")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="run the GEMMs with this process's library and store the outputs")
    d.add_argument("out", type=Path)
    d.add_argument("--shapes", default=",".join(SHAPES), help=f"of {','.join(SHAPES)}")
    d.add_argument("--ms", default=",".join(map(str, MS)))
    d.add_argument("--seed", type=int, default=37)
    c = sub.add_parser("compare", help="exit 1 unless the two dumps' outputs are bitwise equal")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        return compare(args.a, args.b)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    dump(args.out, args.shapes.split(","), [int(m) for m in args.ms.split(",")], args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
