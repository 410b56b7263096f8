"""tools/cubin_diff.py on two real nvcc builds of a small library that differ in one kernel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("elftools")
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA code compiles without a GPU)")

SRC = r"""
namespace {
__global__ void scale_kernel(float* x, float s) { x[threadIdx.x] *= s + SHIFT; }
__global__ void fill_kernel(float* x) { x[threadIdx.x] = 2.0f; }
#ifdef EXTRA
__global__ void extra_kernel(float* x) { x[threadIdx.x] = 5.0f; }
void launch_extra(float* x) { extra_kernel<<<1, 32>>>(x); }
#endif
}  // namespace
void launch(float* x) { scale_kernel<<<1, 32>>>(x, 3.0f); fill_kernel<<<1, 32>>>(x);
#ifdef EXTRA
  launch_extra(x);
#endif
}
"""


def _tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "cubin_diff.py"
    spec = importlib.util.spec_from_file_location("cubin_diff", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cubin")
    (d / "k.cu").write_text(SRC)
    out = {}
    for name, flags in (("a", ["-DSHIFT=0.0f"]), ("b", ["-DSHIFT=1.0f"]), ("c", ["-DSHIFT=0.0f", "-DEXTRA"])):
        so = d / f"lib{name}.so"
        subprocess.run([NVCC, "-shared", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90a,code=sm_90a",
                        *flags, str(d / "k.cu"), "-o", str(so)], check=True, capture_output=True)
        out[name] = str(so)
    return out


def test_changed_kernel_differs_and_the_other_is_the_same(libs, capsys):
    tool = _tool()
    assert tool.main([libs["a"], libs["b"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("DIFF") and "scale_kernel" in ln for ln in lines)
    assert any(ln.startswith("same") and "fill_kernel" in ln for ln in lines)
    assert tool.main([libs["a"], libs["b"], "--match", "fill_kernel", "--expect-same"]) == 0
    assert tool.main([libs["a"], libs["b"], "--match", "scale_kernel", "--expect-same"]) == 1
    assert tool.main([libs["a"], libs["a"], "--expect-same"]) == 0


def test_a_match_that_finds_nothing_fails_an_expectation(libs, capsys):
    tool = _tool()
    assert tool.main([libs["a"], libs["b"], "--match", "no_such_kernel", "--expect-same"]) == 1
    assert "no kernel" in capsys.readouterr().out


def test_a_kernel_in_one_build_only_is_named_with_the_compression_note(libs, capsys):
    tool = _tool()
    assert tool.main([libs["a"], libs["c"], "--expect-same"]) == 1
    out = capsys.readouterr().out
    assert any(ln.startswith("only-new") and "extra_kernel" in ln for ln in out.splitlines())
    assert "--compress-mode=none" in out
    assert tool.main([libs["a"], libs["b"]]) == 0
    assert "--compress-mode=none" not in capsys.readouterr().out  # no kernel in one build only
