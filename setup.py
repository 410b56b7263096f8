"""Build hook for the optional prebuilt CUDA extension ``sharq_vllm._C`` (sources in
sharq_vllm/csrc/, which every wheel and sdist ships as package data).

Metadata lives in pyproject.toml. Two ways to get the kernels on a Hopper GPU machine:

* ``pip install .`` (pip's default build isolation: torch is not importable here, so no ``_C``
  is built): the package compiles its shipped sources at first use into a cache keyed by torch,
  CUDA, architecture and the sources (sharq_vllm/kernels/build.py; needs nvcc at run time).
* ``pip install --no-build-isolation .`` with a CUDA torch and nvcc: ``_C`` is compiled now
  against that torch (~20 s with ninja). Rebuild it after a torch change (docs/KERNELS.md).

torch is deliberately not a build requirement in pyproject.toml: an isolated build would fetch a
second torch, possibly not the one vLLM runs with, and an extension built against it fails to
load. SHARQ_BUILD_CUDA=1 demands the prebuilt extension (the build fails if it cannot be built),
=0 never builds it; unset, it is built when torch is a CUDA build and nvcc is found. Sources,
arch (TORCH_CUDA_ARCH_LIST, default "9.0a") and flags: sharq_vllm/kernels/build.py. Parallel
build: MAX_JOBS.
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


def _say(why: str) -> None:
    """A banner on stderr (pip shows it with -v, and in full when the build fails)."""
    bar = "=" * 78
    print(
        f"\n{bar}\nsharq-vllm: this wheel has NO prebuilt CUDA kernels ({why}).\n"
        "It ships the kernel sources: on a Hopper GPU (sm_90a) SharQ compiles them at first use\n"
        "(needs nvcc; one log line, ~1 min, cached). To build them now instead, against the\n"
        "installed CUDA torch: pip install --no-build-isolation .\n"
        f"Force / forbid: SHARQ_BUILD_CUDA=1 / SHARQ_BUILD_CUDA=0.\n{bar}\n",
        file=sys.stderr,
    )


def _cuda_extension():
    flag = os.environ.get("SHARQ_BUILD_CUDA", "auto")
    if flag == "0":
        _say("SHARQ_BUILD_CUDA=0")
        return None
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as e:  # torch missing at build time (pip's isolated build)
        if flag == "1":
            sys.exit(f"sharq-vllm: SHARQ_BUILD_CUDA=1 but torch is not importable in this build ({e}); "
                     "build with pip's --no-build-isolation next to a CUDA torch")
        _say(f"torch is not importable in this build: {e}; pip's build isolation hides it")
        return None
    if CUDA_HOME is None or (flag != "1" and torch.version.cuda is None):
        why = "nvcc not found (CUDA_HOME)" if CUDA_HOME is None else f"torch {torch.__version__} is a CPU build"
        if flag == "1":
            sys.exit(f"sharq-vllm: SHARQ_BUILD_CUDA=1 but {why}")
        _say(why)
        return None
    build = _build_module()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build.ARCH)  # torch's cpp_extension reads it too
    print(f"sharq-vllm: building the CUDA kernels for {build.sm_names()} against torch "
          f"{torch.__version__} (CUDA {torch.version.cuda})", file=sys.stderr)
    ext = CUDAExtension(
        name="sharq_vllm._C",
        sources=[f"sharq_vllm/csrc/{s}" for s in build.SOURCES],
        extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.nvcc_flags()},
    )
    return ext, BuildExtension.with_options(use_ninja=True)


_built = _cuda_extension()
if _built is not None:
    ext_modules = [_built[0]]
    cmdclass = {"build_ext": _built[1]}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
