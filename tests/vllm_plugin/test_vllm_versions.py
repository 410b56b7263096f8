"""The plugin against the CUDA vLLM wheels it is tested with, imported on this CPU machine:
vllm 0.26.0 (the GPU machines' version) and vllm 0.33.0 (the newest release).

How (no CUDA torch download): ``pip download vllm==X --no-deps`` (300-340 MB, sha256 pinned,
cached under the sharq-vllm cache), extract only its Python sources and metadata (no .so: they
need CUDA torch) into a cache folder, and put that folder first on PYTHONPATH in a subprocess that
runs the plugin's layer-level tests (:data:`TESTS`) on top of this venv's CPU torch 2.13 and
dependencies. vLLM then imports with its UnspecifiedPlatform; everything the plugin touches
(QuantizationConfig, LinearMethodBase, register_quantization_config, ModelConfig's method
resolution, linear layers and their weight loaders, layer-wise online loading, the TP group) is
that version's real code. Not covered: its CUDA kernels and model runner (they need a GPU), and
0.33's own torch (2.14): its Python code runs on torch 2.13 here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sharq_vllm.assets import cache_dir, sha256_file

#: version -> (wheel file, sha256)
WHEELS = {
    "0.26.0": ("vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl",
               "adb1e4c9b46d0dfdb094121ae5aad670a42412dd813ed4e5db069ed6a15006de"),
    "0.33.0": ("vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl",
               "4b6bdec4ab269990bf70d45a3c1e94c3760a27064513760193b26d6f0da883aa"),
}
HERE = Path(__file__).parent
ROOT = HERE.parents[1]
#: the layer-level tests that run against every version (paths from the repository root)
TESTS = (
    "tests/vllm_plugin/test_vllm_api.py",
    "tests/vllm_plugin/test_tensor_parallel.py",
    "tests/vllm_plugin/test_presets_vllm.py",
    "tests/vllm_plugin/test_load_validation.py",
    "tests/vllm_plugin/test_nvfp4_api.py",
    "tests/vllm_plugin/test_fusion.py",
    "tests/test_checkpoint_vllm.py",
)


def vllm_sources(version: str) -> Path:
    """The wheel's Python sources, extracted once into the cache (downloaded if missing)."""
    src = cache_dir() / f"vllm-{version}-py"
    if (src / ".complete").exists():
        return src
    name, sha256 = WHEELS[version]
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl = wheels / name
    if not whl.exists() or sha256_file(whl) != sha256:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", str(wheels), f"vllm=={version}"],
            check=True,
        )
    assert sha256_file(whl) == sha256, f"{whl}: sha256 mismatch"
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            n = info.filename
            if (n.startswith("vllm/") and not n.endswith(".so")) or ".dist-info/" in n:
                zf.extract(info, tmp)
    shutil.rmtree(src, ignore_errors=True)
    tmp.rename(src)
    (src / ".complete").write_text("ok\n")
    return src


@pytest.mark.parametrize("version", list(WHEELS))
def test_plugin_on_vllm_wheel(version: str) -> None:
    path = vllm_sources(version)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)]),
           "SHARQ_EXPECT_VLLM_VERSION": version}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
    print(f"\n[vllm {version}] {r.stdout.strip().splitlines()[-1]}", file=sys.stderr)
