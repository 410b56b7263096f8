"""Where does the remaining error come from? Per-layer and per-layer-type contributions.

Two views, on the same windows the harness uses:

1. Local error, per decoder linear: the 16-bit model runs once; every linear's input x is
   captured and, for each method, the relative output error ||y_q - y|| / ||y|| is split into
   the weight-only part (x @ Wq^T), the activation-only part (q(x) @ W^T) and both.
2. KL attribution: the method is applied to ONE group of linears (one type: q, k, v, o, gate,
   up, down; or one third of the depth) with the rest 16-bit, and the KL from the 16-bit model
   is measured. Groups whose KL is large are where the method loses.

    python -m benchmarks.accuracy.layers --model smollm2 --corpus code --tokens 1023 \
        --window 1024 --methods sharq-nvfp4-4:8-pairs,sharq-plus --out layers.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import corpora as corpora_mod
from .harness import (
    _metrics,
    _ref_logp,
    check_tokenizer,
    choose_bos,
    load_model,
    make_windows,
    resolve_model_dir,
    summarize,
)
from .methods import ACTS, LINEAR_NAMES, METHODS, install


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def local_errors(model, layers, state, ids, methods) -> dict:
    captured: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(
        lambda mod, inp: captured.__setitem__(mod.name, inp[0].detach())) for layer in layers]
    state.set("bf16")
    with torch.inference_mode():
        model(ids)
    for h in hooks:
        h.remove()
    out = {}
    with torch.inference_mode():
        for layer in layers:
            x = captured[layer.name].reshape(-1, captured[layer.name].shape[-1]).float()
            w = layer.w16.float()
            y = x @ w.T
            row = {}
            for m in methods:
                meth = METHODS[m]
                wq = layer.weight_for(meth.weight)  # with the fused layer's tensor scale, as served
                xq = ACTS[meth.act](x, state.act_scale).float()
                row[m] = {"weight": _rel(x @ wq.T, y), "act": _rel(xq @ w.T, y), "both": _rel(xq @ wq.T, y)}
            out[layer.name] = row
    return out


def _by_type(t: str):
    return lambda n: n.endswith("." + t)


def _layer_idx(n: str) -> int:
    parts = n.split(".")
    return int(parts[parts.index("layers") + 1])


def _by_depth(a: int, b: int):
    return lambda n: a <= _layer_idx(n) < b


def _groups(n_layers: int) -> dict:
    g = {f"type:{t}": _by_type(t) for t in LINEAR_NAMES}
    thirds = [(0, n_layers // 3), (n_layers // 3, 2 * n_layers // 3), (2 * n_layers // 3, n_layers)]
    for a, b in thirds:
        g[f"depth:{a}-{b - 1}"] = _by_depth(a, b)
    g["all"] = lambda n: True
    return g


def kl_attribution(model, layers, state, ids, methods, batch: int = 1) -> dict:
    """Per (method, group): sums over all windows of ``ids``, ``batch`` windows per forward."""
    n_layers = 1 + max(_layer_idx(layer.name) for layer in layers)
    groups = _groups(n_layers)
    sums = {m: {g: {"nll": 0.0, "kl": 0.0, "agree": 0.0} for g in groups} for m in methods}
    n = 0
    t0 = time.time()
    with torch.inference_mode():
        for i in range(0, ids.shape[0], batch):
            chunk = ids[i : i + batch]
            targets = chunk[:, 1:].reshape(-1)
            state.active_filter = None
            state.set("bf16")
            out = model(chunk).logits
            ref = _ref_logp(out[:, :-1].reshape(-1, out.shape[-1]))
            del out
            for m in methods:
                for gname, f in groups.items():
                    state.active_filter = f
                    state.set(m)
                    out = model(chunk).logits
                    nll, kl, agree = _metrics(out[:, :-1].reshape(-1, out.shape[-1]), targets, ref)
                    del out
                    acc = sums[m][gname]
                    acc["nll"] += nll
                    acc["kl"] += kl
                    acc["agree"] += agree
            n += targets.shape[0]
            print(f"[layers] attribution windows {min(i + batch, ids.shape[0])}/{ids.shape[0]} "
                  f"({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
        state.active_filter = None
        state.set("bf16")
    return {m: {g: summarize(v, n) for g, v in gs.items()} for m, gs in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.layers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--corpus", default="code")
    p.add_argument("--tokens", type=int, default=1023)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--methods", default="nvfp4,sharq-nvfp4-4:8-pairs,sharq-plus")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-kl", action="store_true")
    p.add_argument("--batch", type=int, default=1, help="windows per forward in the attribution")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    print(f"[layers] {args.model} {args.corpus} on {args.device}", file=sys.stderr, flush=True)
    path = resolve_model_dir(args.model, args.model_dir)
    model, tok, _ = load_model(path, dtype, args.device, args.gguf_file)
    state, layers = install(model)
    bos, _ = choose_bos(args.model, "auto", tok)
    text = corpora_mod.load_text(args.corpus)
    check_tokenizer(args.model, args.corpus, tok, text)
    wins = make_windows(text, tok, args.window,
                        math.ceil(args.tokens / (args.window - 1)), bos)
    ids = torch.tensor(wins, device=args.device)
    methods = args.methods.split(",")
    t0 = time.time()
    res = {"model": args.model, "corpus": args.corpus, "tokens": int(ids[:, 1:].numel()),
           "window": args.window, "methods": methods,
           "local": local_errors(model, layers, state, ids[:1], methods)}
    print(f"[layers] local errors in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    if not args.skip_kl:
        res["kl_attribution"] = kl_attribution(model, layers, state, ids, methods, args.batch)
    res["seconds"] = time.time() - t0
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(summary(res))
    if args.out:
        Path(args.out).with_suffix(".md").write_text(summary(res) + "\n")
    return 0


def summary(res: dict) -> str:
    lines = []
    methods = res["methods"]
    by_type: dict[str, dict[str, list]] = {}
    for name, row in res["local"].items():
        t = name.split(".")[-1]
        for m in methods:
            d = by_type.setdefault(t, {}).setdefault(m, [[], [], []])
            d[0].append(row[m]["weight"])
            d[1].append(row[m]["act"])
            d[2].append(row[m]["both"])
    lines.append("mean relative output error per linear type (weight-only / activation-only / both):")
    lines.append("| type | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for t, d in by_type.items():
        cells = []
        for m in methods:
            w, a, b = (sum(v) / len(v) for v in d[m])
            cells.append(f"{w:.3f} / {a:.3f} / {b:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if "kl_attribution" in res:
        lines.append("")
        lines.append("KL (nats/token) / perplexity with the method on one group only (rest 16-bit):")
        ka = res["kl_attribution"]
        groups = list(next(iter(ka.values())))
        lines.append("| group | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for g in groups:
            lines.append(f"| {g} | " + " | ".join(f"{ka[m][g]['kl']:.4f} / {ka[m][g]['ppl']:.4f}" for m in methods)
                         + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
