"""The GPU machines' vLLM (the CUDA ``vllm==0.26.0`` wheel) imported on this CPU machine.

How (no CUDA torch download): ``pip download vllm==0.26.0 --no-deps`` (303 MB, sha256
pinned), extract only its Python sources and metadata (no .so: they need CUDA torch 2.11)
into a cache folder, and put that folder first on PYTHONPATH in a subprocess that runs the
plugin's API tests (test_vllm_api.py) and the 2-rank tensor-parallel test on top of this
venv's CPU torch 2.13 and dependencies. vLLM 0.26 then imports with its UnspecifiedPlatform;
everything the plugin touches (QuantizationConfig, LinearMethodBase, register_quantization_config,
linear layers and their weight loaders, layer-wise online loading, the TP group) is real 0.26
code. What is not covered: its CUDA kernels and model runner (they need a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sharq_vllm.assets import cache_dir, sha256_file

WHEEL = "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "adb1e4c9b46d0dfdb094121ae5aad670a42412dd813ed4e5db069ed6a15006de"
HERE = Path(__file__).parent




@pytest.fixture(scope="module")
def vllm026_path() -> Path:
    src = cache_dir() / "vllm-0.26.0-py"
    if (src / ".complete").exists():
        return src
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl = wheels / WHEEL
    if not whl.exists() or sha256_file(whl) != WHEEL_SHA256:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", str(wheels), "vllm==0.26.0"],
            check=True,
        )
    assert sha256_file(whl) == WHEEL_SHA256, f"{whl}: sha256 mismatch"
    tmp = src.with_name(src.name + ".tmp")
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            n = info.filename
            if (n.startswith("vllm/") and not n.endswith(".so")) or ".dist-info/" in n:
                zf.extract(info, tmp)
    if src.exists():
        import shutil

        shutil.rmtree(src)
    tmp.rename(src)
    (src / ".complete").write_text("ok\n")
    return src


def _pytest_on_vllm026(path: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path), "SHARQ_EXPECT_VLLM_VERSION": "0.26.0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *[str(HERE / t) for t in tests]],
        env=env, capture_output=True, text=True, timeout=1200,
    )


def test_plugin_api_on_vllm026(vllm026_path: Path) -> None:
    r = _pytest_on_vllm026(vllm026_path, "test_vllm_api.py", "test_tensor_parallel.py")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
