"""Relative activation error of plain FP4 vs SharQ on the same tensors (reference numerics).

    python benchmarks/reference_errors.py [--rows 512] [--k 4096] [--seed 0]

Prints a markdown table and writes benchmarks/results/reference-errors.json. Error is
||x_hat - x||_F / ||x||_F over bf16 activations of three kinds: Gaussian, Student-t (dof 3),
and Student-t with 8 channels scaled x100 (the outlier channels real LLM activations carry).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from sharq_vllm import __version__
from sharq_vllm import reference as R

METHODS = {
    "fp8 (per-token E4M3)": lambda x: _fp8(x),
    "nvfp4": lambda x: R.fake_quantize(x, "nvfp4"),
    "mxfp4": lambda x: R.fake_quantize(x, "mxfp4"),
    "sharq nvfp4 2:4": lambda x: R.sharq_activation(x, "nvfp4", "2:4"),
    "sharq nvfp4 4:8-pairs": lambda x: R.sharq_activation(x, "nvfp4", "4:8-pairs"),
    "sharq mxfp4 2:4": lambda x: R.sharq_activation(x, "mxfp4", "2:4"),
    "sharq mxfp4 4:8-pairs": lambda x: R.sharq_activation(x, "mxfp4", "4:8-pairs"),
    "dense+dense nvfp4": lambda x: R.sharq_activation(x, "nvfp4", "dense"),
}


def _fp8(x: torch.Tensor) -> torch.Tensor:
    """vLLM's dynamic per-token FP8 activation quantization, for scale."""
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1e-12)
    return ((xf / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def make_inputs(rows: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    t = torch.distributions.StudentT(torch.tensor(3.0))
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    outliers = t.sample((rows, k))
    outliers[:, torch.randperm(k, generator=gen)[:8]] *= 100.0
    return {
        "gaussian": torch.randn(rows, k, generator=gen).bfloat16(),
        "student-t": t.sample((rows, k)).bfloat16(),
        "student-t + outlier channels": outliers.bfloat16(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reference-errors.json")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    inputs = make_inputs(args.rows, args.k, gen)
    results: dict[str, dict[str, float]] = {}
    for name, fn in METHODS.items():
        results[name] = {}
        for kind, x in inputs.items():
            err = (fn(x).float() - x.float()).norm() / x.float().norm()
            results[name][kind] = round(err.item(), 5)
    kinds = list(inputs)
    print(f"relative Frobenius error, bf16 activations [{args.rows} x {args.k}], seed {args.seed}\n")
    print("| method | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in kinds) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "shape": [args.rows, args.k], "seed": args.seed, "sharq_vllm": __version__,
        "torch": torch.__version__, "machine": platform.machine(), "relative_error": results,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
