"""Session fixtures: real models (converted from PyPI GGUF wheels) and real vLLM servers.

Cost on a 2-core CPU (docs/PLUGIN.md, "Evidence"): the unquantized baseline server runs
eager (no torch.compile) to start fast; the SharQ server runs with vLLM's default
torch.compile so the plugin's ops are exercised under compilation, as on GPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .vllm_server import VLLMServer

pytestmark = pytest.mark.server


def _log_dir() -> Path:
    d = Path(os.environ.get("SHARQ_TEST_LOG_DIR", "/tmp/sharq-vllm-test-logs"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return _log_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from sharq_vllm.assets import ensure_model

    return ensure_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    from sharq_vllm.assets import ensure_model

    return ensure_model("gemma3")


@pytest.fixture(scope="session")
def paragraph() -> str:
    from .texts import python_history_paragraph

    return python_history_paragraph()


@pytest.fixture(scope="session")
def baseline_prompt_logprobs(smollm2_dir: Path, log_dir: Path, paragraph: str) -> list[float]:
    """Per-token log-probs of the paragraph under the unquantized (bf16) model, through
    vLLM's own prompt_logprobs; the server is stopped right after (2 cores)."""
    from .texts import prompt_logprobs

    with VLLMServer(smollm2_dir, "--enforce-eager", log_path=log_dir / "baseline.log") as srv:
        print(f"\n[baseline server] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        return prompt_logprobs(srv, paragraph)


@pytest.fixture(scope="session")
def sharq_server(smollm2_dir: Path, log_dir: Path) -> Iterator[VLLMServer]:
    """SmolLM2 with ``--quantization sharq`` (paper defaults: nvfp4, 4:8-pairs), compiled,
    under its short model id (``--served-model-name``, as scripts/serve.sh serves it)."""
    from sharq_vllm.assets import MODELS

    with VLLMServer(smollm2_dir, "--quantization", "sharq", log_path=log_dir / "sharq.log",
                    served_name=MODELS["smollm2"].served_name) as srv:
        print(f"\n[sharq server] healthy after {srv.startup_s:.1f}s", file=sys.stderr)
        yield srv
