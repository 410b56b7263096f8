"""Markdown table and bar plot from a harness result JSON.

    python -m benchmarks.accuracy.report benchmarks/results/accuracy-smollm2.json

writes ``accuracy-smollm2.md`` and ``accuracy-smollm2.png`` beside the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["bf16", "fp8", "nvfp4", "mxfp4", "nvfp4-w32", "w4a16-w32", "w4a16-w16", "w4a16-w16-search", "w4a16-w16-noclip",
         "sharq-nvfp4-2:4", "sharq-nvfp4-4:8-pairs", "dense+dense", "sharq-mxfp4", "sharq-mxfp4-wmx",
         "sharq-nvfp4-4:8-pairs-w16", "sharq-nvfp4-2:4-w16", "dense+dense-w16", "sharq-plus",
         "sharq-plus-search", "sharq-plus-search-dense", "sharq-plus-noclip"]


def _ordered(methods: dict) -> list[str]:
    return [m for m in ORDER if m in methods] + [m for m in methods if m not in ORDER]


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def corpus_table(c: dict) -> str:
    ms = c["methods"]
    lines = [
        "| method | ppl | KL (nats) | top-1 | gap rec. ppl | gap rec. KL | gap rec. top-1 | act-gap rec. ppl | act-gap rec. KL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in _ordered(ms):
        r = ms[m]
        g = r.get("gap_recovery", {})
        a = r.get("act_gap_recovery", {})
        lines.append(
            f"| {m} | {r['ppl']:.3f} | {r['kl']:.4f} | {100 * r['top1']:.2f}% | {_pct(g.get('ppl'))} "
            f"| {_pct(g.get('kl'))} | {_pct(g.get('top1'))} | {_pct(a.get('ppl'))} | {_pct(a.get('kl'))} |"
        )
    return "\n".join(lines)


def markdown(res: dict) -> str:
    out = [f"## {res['model']} — accuracy ({res['device_name']}, {res['dtype']} activations)", ""]
    out.append(f"Model: {res['model_source']}. {res['model_note']}.")
    out.append(f"Windows of {res['window']} tokens, stride = length{', BOS-prefixed' if res.get('bos') else ''}; "
               f"activation scales per {res['act_scale']}. Gap recovery = (NVFP4 - method) / (NVFP4 - 16-bit); "
               "act-gap recovery = (NVFP4 activations - method) / (W4A16 - method's weights) with the same weights.")
    if res.get("partial"):
        out.append(f"**PARTIAL RUN**: fewer than the {res['target_tokens']} target tokens per corpus.")
    out.append("")
    for cname, c in res["corpora"].items():
        info = c.get("info") or {}
        out.append(f"### {cname}: {info.get('source', '')} — {c['tokens']} scored tokens ({c['windows']} windows)")
        out.append("")
        out.append(corpus_table(c))
        out.append("")
    return "\n".join(out)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corp = res["corpora"]
    fig, axes = plt.subplots(2, len(corp), figsize=(6.5 * len(corp), 8), squeeze=False)
    for j, (cname, c) in enumerate(corp.items()):
        ms = c["methods"]
        names = _ordered(ms)
        for i, (key, label) in enumerate([("ppl", "perplexity"), ("kl", "KL from 16-bit (nats/token)")]):
            ax = axes[i][j]
            vals = [ms[m][key] for m in names]
            colors = ["#4c72b0" if m.startswith("sharq") or m == "dense+dense" else
                      "#888888" if m in ("bf16", "fp8") else "#dd8452" for m in names]
            ax.bar(range(len(names)), vals, color=colors)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_title(f"{res['model']} — {cname} ({c['tokens']} tokens): {label}", fontsize=9)
            # clip far-off bars (plain MXFP4) so the others stay readable; label them
            top = 1.3 * ms["nvfp4"][key] if "nvfp4" in ms else max(vals) * 1.05
            bottom = min(vals) * 0.95 if key == "ppl" else 0.0
            ax.set_ylim(bottom, top)
            for x, v in enumerate(vals):
                if v > top:
                    ax.text(x, top * 0.97, f"{v:.3g}", ha="center", va="top", fontsize=7, rotation=90,
                            color="white")
            if key == "ppl":
                ax.axhline(ms["bf16"]["ppl"], color="k", lw=0.6, ls="--")
                ax.axhline(ms["nvfp4"]["ppl"], color="#dd8452", lw=0.6, ls=":") if "nvfp4" in ms else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(json_path: Path) -> None:
    json_path = Path(json_path)
    res = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(markdown(res) + "\n")
    plot(res, json_path.with_suffix(".png"))


if __name__ == "__main__":
    for p in sys.argv[1:]:
        write_report(Path(p))
