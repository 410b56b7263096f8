"""Greedy continuations of a real model through vLLM with `--quantization sharq`.

Run once per path, each in a fresh process (the path is chosen by the environment: the CUDA
kernels when the extension loads, the PyTorch reference otherwise — `SHARQ_JIT=0` and no
`SHARQ_EXT_LIB` force the reference), then compare:

    python -m benchmarks.realmodel.greedy_check run --model DIR --out kernel.json
    SHARQ_JIT=0 SHARQ_EXT_LIB= python -m benchmarks.realmodel.greedy_check run --model DIR --out ref.json
    python -m benchmarks.realmodel.greedy_check compare kernel.json ref.json [--tie-nats 0.1]

Two paths "agree" when their greedy tokens are identical, or when at the first differing step
both candidates were within `--tie-nats` of each other in BOTH runs' top-5 logprobs (a tie
that FP32 accumulation order may break either way); the steps after a justified divergence are
not compared (the contexts differ). Default 0.5 nats, as benchmarks/robustness/load_abuse.py:
vLLM returns log-probs of bf16 logits (near |logit| 20 they move in steps of 0.125), and a
last-bit difference in one layer's FP32 sum can flip an FP4 rounding of the next layer's
activations, which moves a logit by a fraction of a nat. Measured on H100 with Qwen2.5-Coder-1.5B
(benchmarks/results/realmodel-qwen2.5-coder.json): kernels vs reference 3/8 identical, 8/8
within 0.5 nats; TP=2 vs TP=1 1/8 identical, 7/8 within 0.5 nats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "import numpy as np\n\n# compute the mean of each column of a matrix\n",
    "Photosynthesis is the process by which",
    "The quick brown fox",
]


def run(args: argparse.Namespace) -> None:
    import torch
    from vllm import LLM, SamplingParams

    from sharq_vllm import ops

    ok, why = ops.kernel_path_available(torch.device("cuda")) if torch.cuda.is_available() else (False, "no CUDA")
    t0 = time.monotonic()
    llm = LLM(
        model=args.model,
        quantization=args.quantization,
        dtype="bfloat16",
        max_model_len=1024,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.eager,
        seed=0,
    )
    startup = time.monotonic() - t0
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, logprobs=5)
    outs = llm.generate(PROMPTS, params)
    results = []
    for prompt, out in zip(PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        steps = []
        for tok, lp in zip(comp.token_ids, comp.logprobs or [], strict=False):
            steps.append({"token": int(tok), "top": {str(k): float(v.logprob) for k, v in lp.items()}})
        results.append({"prompt": prompt, "text": comp.text, "tokens": list(comp.token_ids), "steps": steps})
    info = {
        "model": args.model,
        "quantization": args.quantization,
        "kernel_path": bool(ok),
        "kernel_why": why,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "startup_s": round(startup, 1),
        "tensor_parallel_size": args.tensor_parallel_size,
        "eager": bool(args.eager),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(info, indent=1) + "\n")
    print(f"kernel_path={ok} ({why}); startup {startup:.0f}s")
    for r in results:
        print(repr(r["prompt"][:40]), "->", repr(r["text"][:80]))


def _gap(step: dict, a: int, b: int) -> float | None:
    top = step["top"]
    if str(a) in top and str(b) in top:
        return abs(top[str(a)] - top[str(b)])
    return None


def compare(args: argparse.Namespace) -> int:
    ka = json.loads(Path(args.a).read_text())
    kb = json.loads(Path(args.b).read_text())
    bad = 0
    summary = []
    for ra, rb in zip(ka["results"], kb["results"], strict=True):
        ta, tb = ra["tokens"], rb["tokens"]
        n = min(len(ta), len(tb))
        first = next((i for i in range(n) if ta[i] != tb[i]), None)
        if first is None:
            verdict = "identical"
        else:
            ga = _gap(ra["steps"][first], ta[first], tb[first])
            gb = _gap(rb["steps"][first], ta[first], tb[first])
            if ga is not None and gb is not None and max(ga, gb) <= args.tie_nats:
                verdict = f"tie at step {first} (gaps {ga:.3f}/{gb:.3f} nats)"
            else:
                verdict = f"DIFFERS at step {first} (gaps {ga}/{gb})"
                bad += 1
        summary.append({"prompt": ra["prompt"], "verdict": verdict, "a": ra["text"], "b": rb["text"]})
        print(f"{verdict:45s} {ra['prompt'][:40]!r}")
    out = {"a": args.a, "b": args.b, "tie_nats": args.tie_nats, "mismatches": bad, "prompts": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(summary) - bad}/{len(summary)} prompts agree")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--quantization", default="sharq")
    r.add_argument("--max-tokens", type=int, default=32)
    r.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    r.add_argument("--eager", action="store_true")
    r.add_argument("--tensor-parallel-size", "--tp", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tie-nats", type=float, default=0.5)
    c.add_argument("--out")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
