"""Issue 5's "done when" on CPU: quantize SmolLM2-135M-Instruct offline (`sharq-vllm quantize`),
serve the pre-quantized folder with NO --quantization flag, chat with it, and get the same
prompt log-probs as online `--quantization sharq` on the 16-bit folder (the payload is
bit-identical, so the logits are the same computation).

Skipped until the plugin loads pre-quantized checkpoints and says so with
``SharQConfig.SUPPORTS_PREQUANTIZED = True`` (wiring: docs/CHECKPOINTS.md, "Loading in vLLM").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .vllm_server import VLLMServer

pytestmark = pytest.mark.server


def _plugin_loads_prequantized() -> bool:
    try:
        from sharq_vllm.vllm_plugin.config import SharQConfig
    except Exception:
        return False
    return bool(getattr(SharQConfig, "SUPPORTS_PREQUANTIZED", False))


@pytest.fixture(scope="module")
def prequantized_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sharq_vllm.cli import main

    dst = tmp_path_factory.mktemp("prequantized") / "smollm2-sharq"
    assert main(["quantize", str(smollm2_dir), str(dst), "--no-progress"]) == 0
    assert main(["inspect", str(dst)]) == 0
    return dst


@pytest.mark.skipif(not _plugin_loads_prequantized(), reason="plugin does not load pre-quantized checkpoints yet")
def test_prequantized_folder_serves_chats_and_matches_online(
    prequantized_dir: Path, sharq_server: VLLMServer, log_dir: Path, paragraph: str
) -> None:
    from .texts import prompt_logprobs

    online = prompt_logprobs(sharq_server, paragraph)
    with VLLMServer(prequantized_dir, log_path=log_dir / "prequantized.log") as srv:
        print(f"\n[pre-quantized server] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        r = srv.post(
            "/v1/chat/completions",
            {
                "model": srv.model,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        answer = r["choices"][0]["message"]["content"]
        assert answer.strip(), r
        offline = prompt_logprobs(srv, paragraph)
    assert len(offline) == len(online)
    worst = max(abs(a - b) for a, b in zip(offline, online, strict=True))
    print(f"[pre-quantized vs online] answer={answer!r} max |dlogprob|={worst:.2e}", file=sys.stderr)
    assert worst <= 1e-3, worst
