"""Real text no one in this project wrote, pinned by checksum, and log-likelihood helpers."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

# The four "A. HISTORY OF THE SOFTWARE" paragraphs of CPython's LICENSE.txt (shipped with
# every CPython 3.11 install as <prefix>/lib/python3.11/LICENSE.txt; the same text is in the
# LICENSE of the typing_extensions wheel). Whitespace is normalized before hashing.
HISTORY_SHA256 = "917c15ec9af8248e9a3a33cde02f5513a1268c06e2b414d721ff2e04fce25282"
_START = "Python was created in the early 1990s"
_END = "the various releases."


def _candidates() -> list[Path]:
    v = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    out = [Path(sys.base_prefix) / "lib" / v / "LICENSE.txt", Path(os.__file__).parent / "LICENSE.txt"]
    try:
        import importlib.metadata as md

        dist = md.distribution("typing_extensions")
        out += [Path(str(dist.locate_file(f))) for f in (dist.files or []) if "LICENSE" in str(f)]
    except Exception:
        pass
    return out


def python_history_paragraph() -> str:
    for path in _candidates():
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        i, j = text.find(_START), text.find(_END)
        if i < 0 or j < 0:
            continue
        para = re.sub(r"\s+", " ", text[i : j + len(_END)]).strip()
        digest = hashlib.sha256(para.encode()).hexdigest()
        if digest != HISTORY_SHA256:
            raise AssertionError(f"{path}: paragraph sha256 {digest} != pinned {HISTORY_SHA256}")
        return para
    raise FileNotFoundError(f"CPython LICENSE.txt history paragraphs not found in {_candidates()}")


def prompt_logprobs(server: Any, text: str) -> list[float]:
    """Log-prob of every prompt token after the first, via vLLM's ``prompt_logprobs``."""
    body = {"model": server.model, "prompt": text, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 0, "return_token_ids": True}
    r = server.post("/v1/completions", body)
    choice = r["choices"][0]
    ids = choice.get("prompt_token_ids") or r.get("prompt_token_ids")
    entries = choice["prompt_logprobs"]
    assert entries[0] is None
    out = []
    for pos, entry in enumerate(entries[1:], start=1):
        key = str(ids[pos]) if ids is not None else None
        if key is not None and key in entry:
            out.append(float(entry[key]["logprob"]))
        else:  # the prompt token is the entry whose rank is not 1 or the single one
            out.append(float(next(iter(entry.values()))["logprob"]))
    return out


def reference_emulated_logprobs(model_dir: Path, text: str, fmt: str = "nvfp4", pattern: str = "4:8-pairs") -> list[float]:
    """The same per-token log-probs computed without vLLM: transformers' Llama in bf16 with
    every decoder linear replaced by SharQ reference numerics (weights quantized once with
    the fused layer's shared tensor scale, as vLLM fuses q/k/v and gate/up; activations
    decomposed at every call)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sharq_vllm import reference

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    ids = tok(text).input_ids

    def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (reference.sharq_activation(args[0], fmt, pattern),)

    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        for group in ([at.q_proj, at.k_proj, at.v_proj], [at.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]):
            amax = torch.stack([m.weight.float().abs().amax() for m in group]).amax()
            for m in group:
                payload = reference.quantize_weight(m.weight.data, tensor_amax=amax)
                m.weight.data = reference.dequantize_weight(payload).to(m.weight.dtype)
                m.register_forward_pre_hook(hook)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
