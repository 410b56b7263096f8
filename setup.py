"""Build hook for the optional CUDA extension ``sharq_vllm._C`` (sources in csrc/).

Metadata lives in pyproject.toml. The extension is built only when torch's cpp_extension finds
nvcc (CUDA_HOME) and torch is a CUDA build (SHARQ_BUILD_CUDA=1 forces, =0 disables); otherwise
this is a pure-Python install and the ops use the PyTorch reference (or a JIT build at first use,
see sharq_vllm/kernels).
Sources, arch and flags: sharq_vllm/kernels/build.py (one definition, shared with the JIT build;
arch from TORCH_CUDA_ARCH_LIST, default "9.0a": Hopper, sm_90a). Parallel build: MAX_JOBS.
Because the GPU machines have no network, build there with
    pip install --no-build-isolation -e .      or      python setup.py build_ext --inplace
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ext_modules = []
cmdclass = {}


def _build_module():
    """sharq_vllm/kernels/build.py, loaded by path (the package itself is not importable in an
    isolated build; build.py needs only the standard library at import)."""
    path = Path(__file__).resolve().parent / "sharq_vllm" / "kernels" / "build.py"
    spec = importlib.util.spec_from_file_location("_sharq_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_extension():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as e:  # torch missing at build time (isolated build without torch)
        print(f"sharq-vllm: building without CUDA kernels ({e})", file=sys.stderr)
        return None
    flag = os.environ.get("SHARQ_BUILD_CUDA", "auto")
    if flag == "0" or CUDA_HOME is None or (flag != "1" and torch.version.cuda is None):
        print(
            "sharq-vllm: no CUDA kernels built (SHARQ_BUILD_CUDA=0, nvcc not found, or a CPU-only "
            "torch; SHARQ_BUILD_CUDA=1 forces the build)",
            file=sys.stderr,
        )
        return None
    build = _build_module()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build.ARCH)  # torch's cpp_extension reads it too
    ext = CUDAExtension(
        name="sharq_vllm._C",
        sources=[f"csrc/{s}" for s in build.SOURCES],
        extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.nvcc_flags()},
    )
    return ext, BuildExtension.with_options(use_ninja=True)


_built = _cuda_extension()
if _built is not None:
    ext_modules = [_built[0]]
    cmdclass = {"build_ext": _built[1]}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
