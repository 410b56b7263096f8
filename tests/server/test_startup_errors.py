"""Invalid SharQ options stop the server at startup with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .vllm_server import run_until_exit

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    ("qcfg", "needle"),
    [
        ({"quant_method": "sharq", "format": "fp6"}, "sharq: invalid format='fp6'; expected one of ['nvfp4', 'mxfp4']"),
        ({"quant_method": "sharq", "patern": "2:4"}, "sharq: unknown option(s) ['patern'] in quantization_config"),
    ],
)
def test_invalid_option_is_a_clear_startup_error(smollm2_dir: Path, qcfg: dict, needle: str) -> None:
    code, out, _secs = run_until_exit(
        smollm2_dir, "--quantization", "sharq", "--hf-overrides", json.dumps({"quantization_config": qcfg}),
        timeout=400,
    )
    assert code != 0, out[-3000:]
    assert needle in out, out[-3000:]
    assert "Loading weights" not in out  # rejected before any weight is loaded
