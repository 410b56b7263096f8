"""tools/cubin_diff.py on two real nvcc builds of a small library that differ in one kernel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
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
    for name, flags in (("a", ["-DSHIFT=0.0f"]), ("b", ["-DSHIFT=1.0f"]), ("c", ["-DSHIFT=0.0f", "-DEXTRA"]),
                        ("az", ["-DSHIFT=0.0f", "-Xfatbin=-compress-all"]), ("bz", ["-DSHIFT=1.0f", "-Xfatbin=-compress-all"])):
        so = d / f"lib{name}.so"
        subprocess.run([NVCC, "-shared", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90a,code=sm_90a",
                        *flags, str(d / "k.cu"), "-o", str(so)], check=True, capture_output=True)
        out[name] = str(so)
    # one translation unit plain, another compressed (as prep.cu next to the GEMM files)
    (d / "k2.cu").write_text("namespace { __global__ void other_kernel(float* x) { x[0] = 1.0f; } }\n"
                             "void launch2(float* x) { other_kernel<<<1, 1>>>(x); }\n")
    objs = []
    for src, flags in (("k.cu", ["-DSHIFT=0.0f"]), ("k2.cu", ["-Xfatbin=-compress-all"])):
        obj = d / f"{src}.o"
        subprocess.run([NVCC, "-c", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90a,code=sm_90a", *flags,
                        str(d / src), "-o", str(obj)], check=True, capture_output=True)
        objs.append(str(obj))
    out["mix"] = str(d / "libmix.so")
    subprocess.run([NVCC, "-shared", *objs, "-o", out["mix"]], check=True, capture_output=True)
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


def test_a_kernel_in_one_build_only_is_named(libs, capsys):
    tool = _tool()
    assert tool.main([libs["a"], libs["c"], "--expect-same"]) == 1
    out = capsys.readouterr().out
    assert any(ln.startswith("only-new") and "extra_kernel" in ln for ln in out.splitlines())
    assert "not compared" not in out


def test_compressed_device_code_is_read(libs, capsys):
    """nvcc compresses large device code with zstd (prep.cu's: its kernels were once invisible to
    this tool, which then said 'same' for the rest): a compressed build reads as the plain one."""
    tool = _tool()
    assert tool.main([libs["a"], libs["az"], "--expect-same"]) == 0
    assert tool.main([libs["az"], libs["bz"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("DIFF") and "scale_kernel" in ln for ln in lines)
    assert any(ln.startswith("same") and "fill_kernel" in ln for ln in lines)


def test_unreadable_compressed_device_code_is_named_and_fails_an_expectation(libs, capsys, monkeypatch):
    tool = _tool()
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails: as without the package
    with pytest.raises(SystemExit, match="zstandard"):  # all of this build's kernels are compressed
        tool.main([libs["az"], libs["az"]])
    capsys.readouterr()
    assert tool.main([libs["mix"], libs["mix"]]) == 0  # the plain part compares; the rest is named
    out = capsys.readouterr().out
    assert "same     " in out and "other_kernel" not in out
    assert "not compared" in out and "pip install zstandard" in out
    assert tool.main([libs["mix"], libs["mix"], "--expect-same"]) == 1


def test_opcode_delta_ranks_the_largest_changes():
    from collections import Counter

    tool = _tool()
    old, new = Counter({"FADD": 1, "FMUL": 1, "EXIT": 1}), Counter({"FMUL": 3, "STG": 1, "EXIT": 1})
    assert tool.opcode_delta(old, new) == "instructions 3 -> 5: FMUL +2, FADD -1, STG +1"
    assert tool.opcode_delta(old, new, top=1) == "instructions 3 -> 5: FMUL +2"
    assert tool.opcode_delta(old, old) == "instructions 3 -> 3 (same opcode counts)"


def _nvdisasm(tool):
    found = tool.nvdisasm()
    if found is None:  # the test extra installs it (nvidia-cuda-nvdisasm)
        pytest.skip("no nvdisasm (pip install nvidia-cuda-nvdisasm)")
    return found


def test_sass_counts_a_known_kernel(libs):
    """fill_kernel (x[tid] = 2.0f) compiles to one global store and one exit; the counts come from
    nvdisasm's listing of the library's own cubins, compressed ones included."""
    tool = _tool()
    exe = _nvdisasm(tool)
    for lib in (libs["a"], libs["az"]):
        ops = tool.kernel_opcodes(lib, exe)
        fill = next(c for name, c in ops.items() if "fill_kernel" in name)
        assert fill["STG"] == 1 and fill["EXIT"] == 1 and fill["LDG"] == 0
        scale = next(c for name, c in ops.items() if "scale_kernel" in name)  # x[tid] *= s + SHIFT
        assert scale["LDG"] == 1 and scale["STG"] == 1 and scale["FMUL"] >= 1


def test_sass_option_prints_a_delta_under_each_changed_kernel(libs, capsys):
    tool = _tool()
    _nvdisasm(tool)
    assert tool.main([libs["a"], libs["c"], "--sass"]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("only-new") and "extra_kernel" in ln)
    assert lines[i + 1].strip().startswith("instructions 0 -> ") and "STG +1" in lines[i + 1]
    # unchanged kernels get no delta line
    j = next(i for i, ln in enumerate(lines) if ln.startswith("same") and "fill_kernel" in ln)
    assert not lines[j + 1].startswith(" ")


def test_sass_without_nvdisasm_says_how_to_get_it(libs, monkeypatch):
    tool = _tool()
    monkeypatch.setattr(tool, "nvdisasm", lambda: None)
    with pytest.raises(SystemExit, match="nvidia-cuda-nvdisasm"):
        tool.main([libs["a"], libs["b"], "--sass"])
