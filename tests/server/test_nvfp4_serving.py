"""``--quantization sharq`` / ``sharq-plus`` on NVFP4 checkpoints written by the real tools,
served by a real vLLM server: the tiny fixtures (tests/fixtures/nvfp4; ModelOpt W4A4, and
llm-compressor and ModelOpt with per-member global scales) in float32, where the server's prompt
log-probs equal a reference computed without vLLM (transformers' Llama with each decoder linear =
the method's SharQ activations times the checkpoint's exact per-member weights, float64 GEMM) to
1e-4, and differ from the same reference with vLLM's one-scale-per-fused-layer reading by far
more. The load log names the source format and says its static input scales are unused; /metrics
names the method and counts the checkpoint's payloads as the load log does.

A real model, opt-in (llm-compressor cannot join this venv, so its SmolLM2 checkpoints are made
elsewhere; docs/CHECKPOINTS.md): ``SHARQ_NVFP4_CHECKPOINTS=DIR[,DIR...]`` (NVFP4 checkpoints of
SmolLM2-135M-Instruct) chats with each and expects "Paris".
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

from .texts import prompt_logprobs
from .vllm_server import VLLMServer

pytestmark = pytest.mark.server

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvfp4"
TEXT = ("the water is long and the people will come first to the side of the day and they "
        "could see more of it than we had said")
LABELS = {
    "modelopt": "ModelOpt NVFP4 checkpoint (nvidia-modelopt 0.47.0, W4A4)",
    "llmc": "compressed-tensors NVFP4 checkpoint (compressed-tensors 0.19.0, W4A4)",
}
#: (fixture, SharQ method): the method's preset gives the activations (options.PRESETS)
CASES = [("modelopt-nvfp4", "sharq"), ("llmc-nvfp4-unfused", "sharq"), ("modelopt-nvfp4-unfused", "sharq-plus")]
PATTERNS = {"sharq": "4:8-pairs", "sharq-plus": "2:4"}


def reference_logprobs(folder: Path, text: str, one_scale: bool = False, pattern: str = "4:8-pairs") -> list[float]:
    """Per-token log-probs without vLLM, in float32, with SharQ nvfp4 ``pattern`` activations.
    ``one_scale``: every member of a fused layer dequantized with the one tensor scale vLLM 0.32
    keeps (ModelOpt: the largest weight_scale_2; compressed-tensors: 1 / the largest
    weight_global_scale)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from sharq_vllm import reference
    from sharq_vllm.checkpoint import fused_group
    from sharq_vllm.checkpoint.nvfp4 import read_nvfp4_payloads
    from sharq_vllm.formats import QuantizedBlocks

    class Linear(torch.nn.Module):
        def __init__(self, w: torch.Tensor) -> None:
            super().__init__()
            self.w = w

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x_hat = reference.sharq_activation(x, "nvfp4", pattern)
            return (x_hat.double() @ self.w.double().T).float().to(x.dtype)

    config = AutoConfig.from_pretrained(folder)
    config.quantization_config = None
    model = LlamaForCausalLM(config).float().eval()
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()
                           if v.dtype == torch.bfloat16}, strict=False)
    source, payloads = read_nvfp4_payloads(folder)
    for name, p in payloads.items():
        if one_scale:
            ts = [payloads[m].tensor_scale for m in fused_group(name)[1]]
            t = min(ts) if source.global_is_divisor else max(ts)  # type: ignore[type-var]
            p = QuantizedBlocks(p.codes, p.block_scales, t, p.fmt, p.block)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, Linear(reference.dequantize_weight(p)))
    ids = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def _metrics(srv: VLLMServer) -> tuple[dict[str, str], dict[str, int]]:
    """sharq_info's labels and the SharQ gauges' values on the server's /metrics."""
    import urllib.request

    with urllib.request.urlopen(srv.url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    (info,) = re.findall(r"^sharq_info\{(.*)\} 1\.0$", text, re.MULTILINE)
    values = {name: int(float(v)) for name, v in re.findall(r"^(sharq_\w+)\{.*\} (\S+)$", text, re.MULTILINE)
              if name != "sharq_info"}
    return dict(re.findall(r'(\w+)="([^"]*)"', info)), values


@pytest.mark.parametrize(("name", "method"), CASES)
def test_nvfp4_checkpoint_serves_its_weights_with_sharq_activations(name: str, method: str, log_dir: Path) -> None:
    folder, label, pattern = FIXTURES / name, LABELS[name.split("-")[0]], PATTERNS[method]
    with VLLMServer(folder, "--quantization", method, "--dtype", "float32", "--enforce-eager",
                    "--max-model-len", "256", log_path=log_dir / f"nvfp4-{name}-{method}.log") as srv:
        print(f"\n[{name} {method} server] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        served = prompt_logprobs(srv, TEXT)
        r = srv.post("/v1/completions", {"model": srv.model, "prompt": "the people", "max_tokens": 8,
                                         "temperature": 0})
        assert r["usage"]["completion_tokens"] == 8, r
        info, values = _metrics(srv)
        log = srv.log_text()
    assert f"sharq: serving the FP4 weights of a {label} as stored" in log, log[-3000:]
    assert f"with SharQ activations (nvfp4 {pattern}, act_scale=token)" in log
    src = "input_global_scale" if name.startswith("llmc") else "input_scale"
    assert f"the checkpoint's static input scales ({src}) are not used: SharQ's activation scales are dynamic" in log
    assert log.count(f"w16 weights as stored in the {label}") == 8  # 2 layers x qkv, o, gate_up, down
    assert log.count("row blocks with their own tensor scales") == (4 if name.endswith("-unfused") else 0)
    # /metrics: the method as preset, the checkpoint's weights in options, the load log's bytes
    n, b16, bsq = map(int, re.findall(r"totals: (\d+) layers, (\d+) -> (\d+) bytes", log)[-1])
    assert (info["preset"], info["kernel"]) == (method, "reference"), info
    assert f"pattern={pattern} weight_block=16 weight_rounding=rtn" in info["options"], info
    assert (values["sharq_quantized_layers"], values["sharq_weight_bytes_16bit"], values["sharq_weight_bytes"]) == (
        8, b16, bsq) and n == 8
    assert bsq < b16 / 3  # FP4 codes + E4M3 scales per 16 (+ tensor scales) against 2 bytes a weight
    exact = reference_logprobs(folder, TEXT, pattern=pattern)
    worst = max(abs(a - b) for a, b in zip(served, exact, strict=True))
    print(f"[{name} {method}] {len(served)} prompt log-probs, max |served - reference| = {worst:.2e}", file=sys.stderr)
    assert worst < 1e-4
    if name.endswith("-unfused"):
        wrong = reference_logprobs(folder, TEXT, one_scale=True, pattern=pattern)
        off = max(abs(a - b) for a, b in zip(served, wrong, strict=True))
        print(f"[{name}] max |served - one-scale reading| = {off:.3f}", file=sys.stderr)
        assert off > 0.05


def _smollm2_checkpoints() -> list[str]:
    return [d for d in os.environ.get("SHARQ_NVFP4_CHECKPOINTS", "").split(",") if d]


@pytest.mark.skipif(not _smollm2_checkpoints(), reason="SHARQ_NVFP4_CHECKPOINTS not set (opt-in, see docstring)")
@pytest.mark.parametrize("folder", _smollm2_checkpoints() or ["-"])
def test_real_nvfp4_checkpoint_chats(folder: str, log_dir: Path) -> None:
    with VLLMServer(folder, "--quantization", "sharq", log_path=log_dir / f"nvfp4-{Path(folder).name}.log") as srv:
        print(f"\n[{folder}] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        r = srv.post("/v1/chat/completions", {
            "model": srv.model, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        answer = r["choices"][0]["message"]["content"]
        log = srv.log_text()
    print(f"[{folder}] answer: {answer!r}", file=sys.stderr)
    assert "sharq: serving the FP4 weights of a " in log
    assert "Paris" in answer, answer
