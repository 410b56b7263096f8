"""Served model = measured model: perplexity of SharQ configurations through the real vLLM
engine (``prompt_logprobs``) on the same windows as the reference harness, side by side.

    python -m benchmarks.accuracy.vllm_check --model smollm2 --corpus code --tokens 4092 \
        --window 1024 --methods sharq-nvfp4-4:8-pairs,sharq-plus --out /tmp/vllm-check.json

For each method it builds the plugin options (``--quantization sharq`` + ``hf_overrides``),
scores every window with ``SamplingParams(max_tokens=1, prompt_logprobs=0)`` (vLLM returns
the logprob of each actual prompt token), and runs the reference harness on the same token
ids in the same dtype. Agreement target (issue 7): perplexities within 1%.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

from . import corpora as corpora_mod
from .methods import METHODS

# harness method name -> plugin options (sharq_vllm/options.py); methods that
# declare their options (the sharq-plus family) bring them along
PLUGIN_OPTIONS = {
    "sharq-nvfp4-4:8-pairs": {"format": "nvfp4", "pattern": "4:8-pairs", "weight_block": 32,
                              "weight_rounding": "rtn"},
    "sharq-nvfp4-2:4": {"format": "nvfp4", "pattern": "2:4", "weight_block": 32, "weight_rounding": "rtn"},
    "dense+dense": {"format": "nvfp4", "pattern": "dense", "weight_block": 32, "weight_rounding": "rtn"},
    "sharq-mxfp4": {"format": "mxfp4", "pattern": "2:4", "weight_block": 32, "weight_rounding": "rtn"},
    "sharq-nvfp4-4:8-pairs-w16": {"format": "nvfp4", "pattern": "4:8-pairs", "weight_block": 16,
                                  "weight_rounding": "rtn"},
    "sharq-nvfp4-2:4-w16": {"format": "nvfp4", "pattern": "2:4", "weight_block": 16, "weight_rounding": "rtn"},
    "dense+dense-w16": {"format": "nvfp4", "pattern": "dense", "weight_block": 16, "weight_rounding": "rtn"},
    **{name: {("format" if k == "fmt" else k): v for k, v in m.options.items() if k != "act_scale"}
       for name, m in METHODS.items() if m.options},
}


def nll_from_prompt_logprobs(prompt_ids: list[int], prompt_logprobs) -> tuple[float, int]:
    """Sum of -log p(token_i | tokens_<i) for i >= 1 from a vLLM ``prompt_logprobs`` list
    (entry 0 is None; entry i maps token id -> Logprob and holds prompt_ids[i])."""
    total, n = 0.0, 0
    for i in range(1, len(prompt_ids)):
        entry = prompt_logprobs[i]
        lp = entry[prompt_ids[i]]
        total -= float(getattr(lp, "logprob", lp))
        n += 1
    return total, n


def vllm_ppl(model_dir: str, windows: list[list[int]], options: dict | None, dtype: str,
             max_model_len: int) -> dict:
    """Perplexity of ``windows`` through vLLM; ``options`` None = the 16-bit model."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = {}
    if options is not None:
        kw["quantization"] = "sharq"
        kw["hf_overrides"] = {"quantization_config": {"quant_method": "sharq", **options}}
    llm = LLM(model=model_dir, dtype=dtype, max_model_len=max_model_len, enforce_eager=True,
              max_num_batched_tokens=max_model_len, max_num_seqs=4, seed=0, **kw)
    sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    t0 = time.time()
    outs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], sp, use_tqdm=False)
    nll = n = 0
    for w, o in zip(windows, outs, strict=True):
        a, b = nll_from_prompt_logprobs(w, o.prompt_logprobs)
        nll += a
        n += b
    dt = time.time() - t0
    del llm
    gc.collect()
    return {"ppl": math.exp(nll / n), "nll": nll, "tokens": n, "seconds": dt}


def reference_ppl(model_dir: str, windows: list[list[int]], method: str, dtype: str, device: str) -> dict:
    import torch

    from .harness import _metrics, load_model
    from .methods import install

    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    model, _, _ = load_model(Path(model_dir), tdtype, device)
    state, _ = install(model)
    state.set(method)
    nll = n = 0
    t0 = time.time()
    with torch.inference_mode():
        for w in windows:
            ids = torch.tensor([w], device=device)
            logits = model(ids).logits[0, :-1]
            a, _, _ = _metrics(logits, ids[0, 1:], None)
            nll += a
            n += len(w) - 1
    return {"ppl": math.exp(nll / n), "nll": nll, "tokens": n, "seconds": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.vllm_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--corpus", default="code")
    p.add_argument("--tokens", type=int, default=4092)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--methods", default="bf16,sharq-nvfp4-4:8-pairs,sharq-nvfp4-2:4,sharq-plus")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from .harness import choose_bos, make_windows, resolve_model_dir

    model_dir = str(resolve_model_dir(args.model, args.model_dir))
    tok = AutoTokenizer.from_pretrained(model_dir)
    bos, _ = choose_bos(args.model, "auto", tok)
    n_windows = math.ceil(args.tokens / (args.window - 1))
    windows = make_windows(corpora_mod.load_text(args.corpus), tok, args.window, n_windows, bos)
    rows = {}
    for m in args.methods.split(","):
        if m != "bf16" and m not in PLUGIN_OPTIONS:
            raise SystemExit(f"{m}: no plugin configuration (known: {sorted(PLUGIN_OPTIONS)})")
        v = vllm_ppl(model_dir, windows, None if m == "bf16" else PLUGIN_OPTIONS[m], args.dtype,
                     args.window + 8)
        r = reference_ppl(model_dir, windows, m, args.dtype, args.device)
        rows[m] = {"vllm": v, "reference": r, "rel_diff": v["ppl"] / r["ppl"] - 1,
                   "options": PLUGIN_OPTIONS.get(m), "description": METHODS[m].description}
        print(f"[vllm_check] {m}: vLLM ppl {v['ppl']:.4f}  reference {r['ppl']:.4f}  "
              f"diff {100 * rows[m]['rel_diff']:+.2f}%", file=sys.stderr, flush=True)
    res = {"model": args.model, "corpus": args.corpus, "window": args.window, "dtype": args.dtype,
           "tokens": sum(len(w) - 1 for w in windows), "methods": rows,
           "all_within_1pct": all(abs(r["rel_diff"]) <= 0.01 for r in rows.values())}
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    raise SystemExit(main())
