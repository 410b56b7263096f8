#!/usr/bin/env python3
"""Markdown summary + PNG plots from ``benchmarks/results/serving-<card>.json`` (issue 8).

    python3 benchmarks/serving/report.py benchmarks/results/serving-h100.json \\
        --md benchmarks/results/serving-h100.md --plots benchmarks/results
    python3 benchmarks/serving/report.py --fake /tmp/fake.json ...   # layout test, FAKE numbers

Ratios SharQ/FP8 and SharQ/BF16 for the main run (Llama-3.1-8B, TP=1) are checked against the
issue-8 targets (H100, SharQ / FP8 in the same run); the 70B run against "KV cache >= 8x FP8's,
max_model_len 8192, >= 32 concurrent sequences". Plots need matplotlib (skipped without it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

#: SharQ / FP8 targets (">= x"; weight memory "<= x") by card: issue 8 on the H100, issue 15 on
#: the H200 (which names no weight-memory target); other cards are checked against issue 8's
Target = dict[str, tuple[str, float, float | None]]
TARGETS: dict[str, Target] = {
    "h100": {
        "decode_1": (">=", 1.4, 1.6),
        "decode_8": (">=", 1.3, None),
        "decode_32": (">=", 1.1, None),
        "decode_128": (">=", 0.8, None),
        "decode_256": (">=", 0.8, None),
        "prefill": (">=", 0.6, None),
        "weight_gib": ("<=", 0.6, None),
    },
    "h200": {
        "decode_1": (">=", 1.4, None),
        "decode_8": (">=", 1.3, None),
        "decode_32": (">=", 1.0, None),
        "decode_128": (">=", 0.65, None),
        "decode_256": (">=", 0.65, None),
        "prefill": (">=", 0.6, None),
    },
}


def targets_for(card_slug: str | None) -> tuple[str, Target]:
    """(issue, targets) for a card."""
    if card_slug == "h200":
        return "issue 15", TARGETS["h200"]
    return "issue 8", TARGETS["h100"]
#: the issue-8 reference, measured before the SharQ kernels (vLLM 0.26, one H100, dummy weights,
#: 128 in / 256 out, output tokens/s by batch size; prefill 64 x 2048)
REFERENCE = {
    "fp8": {"1": 232, "8": 1767, "32": 6017, "128": 16031, "256": 21479, "prefill": 63900},
    "bf16": {"1": 153, "8": 1171, "32": 4223, "128": 12028, "256": 16947, "prefill": 42500},
}
METHOD_ORDER = ("bf16", "fp8", "sharq")
LABEL = {"bf16": "BF16", "fp8": "FP8", "sharq": "SharQ"}


def _fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:,.{nd}f}"
    return str(v)


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if a is not None and b not in (None, 0) else None
    except (TypeError, ValueError):
        return None


def _check(key: str, r: float | None, targets: Target) -> str:
    if key not in targets or r is None:
        return ""
    op, tgt, stretch = targets[key]
    ok = r >= tgt if op == ">=" else r <= tgt
    s = f"{op} {tgt:g}x: {'PASS' if ok else 'FAIL'}"
    if stretch is not None and ok:
        s += f" (stretch {stretch:g}x: {'met' if r >= stretch else 'not met'})"
    return s


def _contended(r: dict[str, Any], key: str) -> bool:
    """The phase behind row `key` (decode_<b> or prefill) of one method's run was measured with the
    host's load above half its CPUs (offline.py records both): a target is not judged on it."""
    cpus = r.get("host_cpus") or 0
    if key.startswith("decode_"):
        d = r.get("decode_detail", {}).get(key[len("decode_"):]) or {}
    elif key == "prefill":
        d = r.get("prefill_detail") or {}
    else:
        return False
    load = d.get("loadavg_1m")
    return bool(cpus) and isinstance(load, (int, float)) and load > cpus / 2


def offline_table(run: dict[str, Any], with_targets: bool, targets: Target | None = None) -> list[str]:
    targets = targets if targets is not None else TARGETS["h100"]
    ms = run.get("methods", {})
    present = [m for m in METHOD_ORDER if m in ms]
    batches = sorted({int(b) for m in present for b in ms[m].get("decode_tok_s", {})})
    rows: list[tuple[str, str, dict[str, Any], int]] = []
    for b in batches:
        rows.append((f"decode tok/s, batch {b}", f"decode_{b}", {m: ms[m].get("decode_tok_s", {}).get(str(b)) for m in present}, 0))
    # the decode steps alone (offline.py: the batch's prefill left out, like online TPOT); shown
    # beside the targets' metric, not judged
    for b in batches:
        vals = {m: ms[m].get("decode_step_tok_s", {}).get(str(b)) for m in present}
        if any(v is not None for v in vals.values()):
            rows.append((f"decode steps tok/s, batch {b} (prefill left out)", f"decodestep_{b}", vals, 0))
    rows.append((f"prefill tok/s ({run.get('prefill', '64x2048')})", "prefill", {m: ms[m].get("prefill_tok_s") for m in present}, 0))
    rows.append(("weight memory GiB", "weight_gib", {m: ms[m].get("weight_gib") for m in present}, 2))
    def _tensor_gib(m: str) -> float | None:
        st = ms[m].get("model_stats")
        if isinstance(st, list) and st and all(isinstance(x, dict) and "tensor_gib" in x for x in st):
            return max(x["tensor_gib"] for x in st)
        return None

    if any(_tensor_gib(m) is not None for m in present):
        rows.append(("model tensors GiB (per GPU, apply_model)", "tensor_gib", {m: _tensor_gib(m) for m in present}, 2))
    rows.append(("KV cache tokens", "kv_tokens", {m: ms[m].get("kv_tokens") for m in present}, 0))
    rows.append(("KV cache GiB", "kv_gib", {m: ms[m].get("kv_gib") for m in present}, 2))
    if any(ms[m].get("long") for m in present):
        rows.append(("long phase out tok/s", "long", {m: (ms[m].get("long") or {}).get("out_tok_s") for m in present}, 0))
    rows.append(("engine startup s", "startup", {m: ms[m].get("startup_s") for m in present}, 0))
    head = ["metric", *[LABEL[m] for m in present]]
    has_q = "sharq" in present
    if has_q and "fp8" in present:
        head.append("SharQ/FP8")
    if has_q and "bf16" in present:
        head.append("SharQ/BF16")
    if with_targets and has_q and "fp8" in present:
        head.append("target (SharQ/FP8)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, key, vals, nd in rows:
        cells = [name, *[_fmt(vals[m], nd) for m in present]]
        rf = _ratio(vals.get("sharq"), vals.get("fp8")) if has_q and "fp8" in present else None
        if has_q and "fp8" in present:
            cells.append(_fmt(rf, 2) + ("x" if rf is not None else ""))
        if has_q and "bf16" in present:
            rb = _ratio(vals.get("sharq"), vals.get("bf16"))
            cells.append(_fmt(rb, 2) + ("x" if rb is not None else ""))
        if with_targets and has_q and "fp8" in present:
            judged = _check(key, rf, targets)
            if judged and any(_contended(ms[m], key) for m in ("sharq", "fp8")):
                judged = "not judged: CPU contention"
            cells.append(judged)
        lines.append("| " + " | ".join(cells) + " |")
    lines += host_load_lines({m: ms[m] for m in present})
    # status / problems / which quant method each layer got
    for m in present:
        st = ms[m].get("model_stats")
        if isinstance(st, list) and st and isinstance(st[0], dict) and st[0].get("quant_methods"):
            lines.append(f"\n{LABEL[m]} layers by quant method (rank 0): "
                         + ", ".join(f"{k} x{v}" for k, v in st[0]["quant_methods"].items()))
    for m in present:
        st = ms[m].get("status")
        extra = []
        if st != "ok":
            extra.append(f"status `{st}`")
        if ms[m].get("phases_skipped"):
            extra.append(f"skipped {ms[m]['phases_skipped']}")
        if ms[m].get("enforce_eager"):
            extra.append("ran EAGER after CUDA graphs failed to start (graphs_error in the JSON)"
                         if ms[m].get("graphs_error") else "ran EAGER (--enforce-eager)")
        if extra:
            lines.append(f"\n{LABEL[m]}: " + "; ".join(extra))
    return lines


def host_load_lines(ms: dict[str, dict[str, Any]]) -> list[str]:
    """The host's 1-minute load average after each measured phase (offline.py records it), and a
    warning where it exceeded half the host's CPUs: the engine's CPU side then shared the CPUs."""
    loads = {m: [d["loadavg_1m"] for d in [*r.get("decode_detail", {}).values(), r.get("prefill_detail") or {}]
                 if isinstance(d.get("loadavg_1m"), (int, float))] for m, r in ms.items()}
    loads = {m: v for m, v in loads.items() if v}
    if not loads:
        return []
    cpus = max((r.get("host_cpus") or 0 for r in ms.values()), default=0)
    parts = [f"{LABEL[m]} {min(v):.1f}-{max(v):.1f}" for m, v in loads.items()]
    out = [f"\nHost load (1-minute average after each phase): {', '.join(parts)}"
           + (f" on {cpus} CPUs" if cpus else "") + "."]
    busy = [LABEL[m] for m, v in loads.items() if cpus and max(v) > cpus / 2]
    if busy:
        out.append(f"**CPU contention**: {', '.join(busy)} measured with the load above half the CPUs "
                   "(another process on the host): read their rates with care.")
    return out


def capacity_lines(run: dict[str, Any]) -> list[str]:
    ms = run.get("methods", {})
    q, f = ms.get("sharq", {}), ms.get("fp8", {})
    out = []
    r = _ratio(q.get("kv_tokens"), f.get("kv_tokens"))
    started = q.get("startup_s") is not None
    out.append(f"- SharQ started with max_model_len {run.get('max_model_len')}: {'yes' if started else 'NO'}"
               f" (status `{q.get('status')}`); FP8: {'yes' if f.get('startup_s') is not None else 'NO'}"
               f" (status `{f.get('status')}`{', EAGER' if f.get('enforce_eager') else ''})")
    out.append(f"- KV cache SharQ / FP8: {_fmt(q.get('kv_tokens'))} / {_fmt(f.get('kv_tokens'))} tokens = "
               f"{_fmt(r, 1)}x (target >= 8x: {'PASS' if r is not None and r >= 8 else 'FAIL' if r is not None else 'n/a'})")
    for name, m in (("SharQ", q), ("FP8", f)):
        lg = m.get("long") or {}
        if lg:
            need = lg.get("kv_tokens_needed")
            fits = m.get("kv_tokens") is not None and need is not None and m["kv_tokens"] >= need
            out.append(f"- {name}: {lg.get('batch')} concurrent sequences x ({lg.get('input_len')} + {lg.get('output_len')}) tokens "
                       f"need {_fmt(need)} KV tokens: {'all resident at once' if fits else 'NOT all resident (vLLM queues/preempts)'}; "
                       f"{_fmt(lg.get('out_tok_s'))} output tok/s, {_fmt(lg.get('wall_s'), 1)} s")
        d32 = (m.get("decode_tok_s") or {}).get("32")
        if d32 is not None:
            out.append(f"- {name}: decode at 32 concurrent sequences (128 in / 256 out): {_fmt(d32)} tok/s")
    return out


def online_table(run: dict[str, Any]) -> list[str]:
    ms = run.get("methods", {})
    present = [m for m in METHOD_ORDER if m in ms and ms[m].get("online", {}).get("levels")]
    if not present:
        return []
    lines = ["| method | load | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | ITL p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in present:
        for lv, s in ms[m]["online"]["levels"].items():
            if "request_throughput" not in s:
                lines.append(f"| {LABEL[m]} | {lv} | {s.get('status')} | | | | | | |")
                continue
            lines.append(f"| {LABEL[m]} | {lv} | {_fmt(s.get('request_throughput'), 2)} | {_fmt(s.get('output_throughput'))} | "
                         f"{_fmt(s.get('p50_ttft_ms'), 1)} | {_fmt(s.get('p99_ttft_ms'), 1)} | {_fmt(s.get('p50_tpot_ms'), 2)} | "
                         f"{_fmt(s.get('p99_tpot_ms'), 2)} | {_fmt(s.get('p99_itl_ms'), 2)} |")
    if "sharq" in present and "fp8" in present:
        lines.append("")
        lines.append("| load | SharQ/FP8 out tok/s | SharQ/FP8 TPOT p50 (lower is better) | SharQ/FP8 TTFT p50 |")
        lines.append("|---|---|---|---|")
        for lv, s in ms["sharq"]["online"]["levels"].items():
            f = ms["fp8"]["online"]["levels"].get(lv, {})
            lines.append(f"| {lv} | {_fmt(_ratio(s.get('output_throughput'), f.get('output_throughput')), 2)} | "
                         f"{_fmt(_ratio(s.get('p50_tpot_ms'), f.get('p50_tpot_ms')), 2)} | "
                         f"{_fmt(_ratio(s.get('p50_ttft_ms'), f.get('p50_ttft_ms')), 2)} |")
    return lines


def profile_table(run: dict[str, Any]) -> list[str]:
    """GPU time per decode step by bucket (offline.py --profile-batches; trace_summary.py), one
    column per method and profiled batch."""
    ms = run.get("methods", {})
    cols = [(m, b, p) for m in METHOD_ORDER for b, p in (ms.get(m, {}).get("profile") or {}).items()
            if "buckets_us_per_step" in p]
    if not cols:
        return []
    buckets: list[str] = []
    for _, _, p in cols:
        buckets += [k for k in p["buckets_us_per_step"] if k not in buckets]
    lines = ["| us per decode step | " + " | ".join(f"{LABEL[m]} b{b}" for m, b, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for k in buckets:
        lines.append(f"| {k} | " + " | ".join(_fmt(p["buckets_us_per_step"].get(k), 1) for _, _, p in cols) + " |")
    for key, label in (("kernel_us_per_step", "kernels summed"), ("busy_us_per_step", "GPU busy (overlaps once)"),
                       ("span_us_per_step", "step span"), ("launches_per_step", "kernels a step")):
        lines.append(f"| **{label}** | " + " | ".join(_fmt(p.get(key), 1) for _, _, p in cols) + " |")
    lines.append("| profiled steps | " + " | ".join(str(p.get("steps")) for _, _, p in cols) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    fake = data.get("FAKE")
    out = []
    if fake:
        out.append("> **FAKE NUMBERS — layout test only, not a measurement.**\n")
    out.append(f"# SharQ serving benchmark — {data.get('card')} ({data.get('card_slug')})\n")
    out.append(f"vLLM {data.get('vllm')}, torch {data.get('torch')}; weights `--load-format dummy`; "
               f"defaults (torch.compile + CUDA graphs) unless marked eager; updated {data.get('updated')}.\n")
    for note in data.get("notes", []):  # what a reader must know about how a run was taken
        out.append(f"> {note}\n")
    runs = data.get("models", {})
    order = sorted(runs, key=lambda k: (k != "Llama-3.1-8B", "@tp" in k, k))
    for key in order:
        run = runs[key]
        main = key == "Llama-3.1-8B"
        out.append(f"## {run.get('model', key)}, TP={run.get('tp', 1)}" + (f" ({key})" if "#" in key else ""))
        out.append(f"max_model_len {run.get('max_model_len')}, gpu_memory_utilization {run.get('gpu_memory_utilization')}, "
                   f"{run.get('input_len')} in / {run.get('output_len')} out, prefill {run.get('prefill')}\n")
        if any(m.get("decode_tok_s") or m.get("weight_gib") is not None for m in run.get("methods", {}).values()):
            out.extend(offline_table(run, with_targets=main, targets=targets_for(data.get("card_slug"))[1]))
            out.append("")
        if "70B" in key:
            out.extend(capacity_lines(run))
            out.append("")
        if main and data.get("card_slug") in ("h100", "fake"):
            ref = "; ".join(f"{LABEL[m]} " + " / ".join(f"{v:,}" for v in r.values()) for m, r in REFERENCE.items())
            out.append(f"Issue-8 reference (H100, vLLM 0.26, batch 1/8/32/128/256 then prefill): {ref}.\n")
        pt = profile_table(run)
        if pt:
            out.append(f"### {run.get('model', key)}: GPU time per decode step (vLLM's torch profiler)\n")
            out.extend(pt)
            out.append("")
        ot = online_table(run)
        if ot:
            out.append(f"### {run.get('model', key)} TP={run.get('tp', 1)}: online (`vllm serve` + `vllm bench serve`)\n")
            out.extend(ot)
            out.append("")
    return "\n".join(out) + "\n"


def plots(data: dict[str, Any], outdir: Path, prefix: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[report] matplotlib missing: no plots", file=sys.stderr)
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    fake = " (FAKE)" if data.get("FAKE") else ""
    # profiling runs (offline.py --profile-batches) repeat a few batches of a plotted run: left out
    runs = {k: v for k, v in data.get("models", {}).items()
            if any(m.get("decode_tok_s") for m in v.get("methods", {}).values())
            and not any(m.get("profile") for m in v.get("methods", {}).values())}
    if runs:
        keys = sorted(runs, key=lambda k: (k != "Llama-3.1-8B", "@tp" in k, k))
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for m in METHOD_ORDER:
                d = runs[key].get("methods", {}).get(m, {}).get("decode_tok_s", {})
                if d:
                    xs = sorted(int(b) for b in d)
                    ax.plot(xs, [d[str(x)] for x in xs], marker="o", label=LABEL[m])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch (concurrent sequences)")
            ax.set_ylabel("output tokens/s")
            ax.set_title(f"{key}{fake}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"vLLM {data.get('vllm')} decode throughput, {data.get('card')}, 128 in / 256 out{fake}")
        fig.tight_layout()
        p = outdir / f"{prefix}-decode.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    online = {k: v for k, v in data.get("models", {}).items()
              if any(m.get("online", {}).get("levels") for m in v.get("methods", {}).values())}
    if online:
        key = "Llama-3.1-8B" if "Llama-3.1-8B" in online else next(iter(online))
        ms = online[key]["methods"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for m in METHOD_ORDER:
            lv = ms.get(m, {}).get("online", {}).get("levels", {})
            pts = [(s["output_throughput"], s.get("p50_tpot_ms"), s.get("p99_tpot_ms"), s.get("p50_ttft_ms"), s.get("p99_ttft_ms"))
                   for s in lv.values() if "output_throughput" in s]
            if not pts:
                continue
            pts.sort()
            x = [p[0] for p in pts]
            line = axes[0].plot(x, [p[1] for p in pts], marker="o", label=f"{LABEL[m]} p50")[0]
            axes[0].plot(x, [p[2] for p in pts], marker="x", ls="--", color=line.get_color(), label=f"{LABEL[m]} p99")
            line = axes[1].plot(x, [p[3] for p in pts], marker="o", label=f"{LABEL[m]} p50")[0]
            axes[1].plot(x, [p[4] for p in pts], marker="x", ls="--", color=line.get_color(), label=f"{LABEL[m]} p99")
        for ax, t in zip(axes, ("TPOT (ms)", "TTFT (ms)"), strict=True):
            ax.set_xlabel("output tokens/s (load: max-concurrency / request-rate levels)")
            ax.set_ylabel(t)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{key}: latency vs load, vllm serve + vllm bench serve, {data.get('card')}{fake}")
        fig.tight_layout()
        p = outdir / f"{prefix}-latency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    return made


def fake_data() -> dict[str, Any]:
    """Plausible-looking FAKE numbers to test the layout (clearly marked)."""
    import random

    rnd = random.Random(0)
    bs = ["1", "8", "32", "128", "256"]
    base = {"bf16": REFERENCE["bf16"], "fp8": REFERENCE["fp8"],
            "sharq": {"1": 380, "8": 2500, "32": 6800, "128": 14000, "256": 18000, "prefill": 40000}}
    w = {"bf16": 14.99, "fp8": 8.49, "sharq": 5.2}
    kv = {"bf16": 430000, "fp8": 480000, "sharq": 505000}

    def run(model, tp, mult=1.0, methods=("bf16", "fp8", "sharq")):
        ms = {}
        for m in methods:
            ms[m] = {"status": "ok", "decode_tok_s": {b: round(base[m][b] * mult * rnd.uniform(0.95, 1.05), 1) for b in bs},
                     "prefill_tok_s": base[m]["prefill"] * mult, "weight_gib": w[m] / mult, "kv_tokens": kv[m],
                     "kv_gib": kv[m] * 128 * 1024 / 2**30, "startup_s": 90.0}
            ms[m]["online"] = {"status": "ok", "levels": {
                f"c{c}": {"request_throughput": c * 0.5 * mult, "output_throughput": base[m][str(min(c, 128))] * 0.9,
                          "p50_ttft_ms": 20 + c, "p99_ttft_ms": 40 + 3 * c, "p50_tpot_ms": 1000 * c / base[m][str(min(c, 128))],
                          "p99_tpot_ms": 1200 * c / base[m][str(min(c, 128))], "p99_itl_ms": 10.0}
                for c in (1, 8, 32, 128)}}
        return {"model": model, "tp": tp, "max_model_len": 4096, "gpu_memory_utilization": 0.9, "input_len": 128,
                "output_len": 256, "prefill": "64x2048", "methods": ms}

    r70 = run("Llama-3.1-70B", 1, 0.12, ("fp8", "sharq"))
    r70["max_model_len"] = 8192
    r70["methods"]["fp8"]["kv_tokens"] = 12736
    r70["methods"]["sharq"]["kv_tokens"] = 110000
    r70["methods"]["sharq"]["max_concurrency"] = 13.4
    r70["methods"]["sharq"]["long"] = {"batch": 32, "out_tok_s": 900.0}
    for m in r70["methods"].values():
        m.pop("online")
    return {"FAKE": True, "card": "FAKE H100", "card_slug": "fake", "vllm": "0.26.0", "torch": "2.11.0", "model": "Llama-3.1-8B",
            "models": {"Llama-3.1-8B": run("Llama-3.1-8B", 1), "Llama-3.1-70B": r70,
                       "Llama-3.1-8B@tp2": run("Llama-3.1-8B", 2, 1.6, ("fp8", "sharq"))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", help="serving-<card>.json")
    ap.add_argument("--md", default=None, help="write markdown here (default: next to the JSON)")
    ap.add_argument("--plots", default=None, help="folder for PNGs (default: next to the JSON)")
    ap.add_argument("--fake", default=None, help="write FAKE data to this JSON path first (layout test)")
    ap.add_argument("--quiet", action="store_true", help="do not print the markdown")
    ap.add_argument("--no-write", action="store_true", help="write neither markdown nor plots")
    ap.add_argument("--print-runs", default=None, help="print only these run keys (space separated)")
    a = ap.parse_args(argv)
    if a.fake:
        Path(a.fake).write_text(json.dumps(fake_data(), indent=1))
        a.json = a.fake
    if not a.json:
        ap.error("give a results JSON (or --fake PATH)")
    src = Path(a.json)
    data = json.loads(src.read_text())
    if not a.no_write:
        md_path = Path(a.md) if a.md else src.with_suffix(".md")
        md_path.write_text(markdown(data))
        made = plots(data, Path(a.plots) if a.plots else src.parent, src.stem)
        print(f"[report] wrote {md_path}" + "".join(f", {p}" for p in made))
    if a.print_runs is not None:
        keep = a.print_runs.split()
        sub = dict(data)
        sub["models"] = {k: v for k, v in data.get("models", {}).items() if not keep or k in keep}
        print(markdown(sub))
    elif not a.quiet:
        print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
