"""Building and loading the SharQ CUDA extension (``torch.ops.sharq_C.*``, sources in ``csrc/``).

One definition of the sources, the target architecture and the compiler flags, shared by
``setup.py`` (which loads this file by path: it imports nothing but the standard library at the
top), the JIT build below and ``tools/gpu/prebuild_ext.sh`` (``python -m
sharq_vllm.kernels.build nvcc-flags``).

Loading order (:func:`load_extension`, first call only; nothing touches CUDA at import): the
prebuilt module from ``pip install .`` / ``python setup.py build_ext --inplace``
(``sharq_vllm._C``), then a library named by ``SHARQ_EXT_LIB``, then a JIT build with
``torch.utils.cpp_extension.load`` (needs nvcc and the csrc/ sources: a source checkout;
``SHARQ_JIT=0`` disables it).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import threading

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
SOURCES = ("bindings.cpp", "prep.cu", "gemm.cu")
#: the kernels use Hopper's thread-block clusters, distributed shared memory and programmatic
#: dependent launch: sm_90a and nothing else (dispatch.py serves them on capability 9.0 only)
ARCH = "9.0a"
CXX_FLAGS = ["-O3", "-std=c++17"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v"]

_lock = threading.Lock()
_result: list[tuple[bool, str]] = []


def arch_list() -> list[str]:
    """The architectures to build: ``TORCH_CUDA_ARCH_LIST`` (torch's variable, also read by its
    cpp_extension) or :data:`ARCH`."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", ARCH).replace(";", " ").split()


def gencode_flags(archs: list[str] | None = None) -> list[str]:
    """``-gencode`` flags for nvcc, e.g. ``-gencode=arch=compute_90a,code=sm_90a``."""
    flags = []
    for a in archs if archs is not None else arch_list():
        num = a.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def nvcc_flags() -> list[str]:
    return [*NVCC_FLAGS, *gencode_flags()]


def _ops_registered() -> bool:
    import torch

    try:
        return hasattr(torch.ops.sharq_C, "gemm_mma")
    except Exception:
        return False


def _jit_build() -> str:
    from torch.utils import cpp_extension

    if not all(os.path.exists(os.path.join(CSRC, s)) for s in SOURCES):
        raise RuntimeError(f"sources not found under {CSRC}")
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        raise RuntimeError("nvcc not found")
    build_dir = os.environ.get("SHARQ_BUILD_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sharq_vllm", "build"
    )
    os.makedirs(build_dir, exist_ok=True)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ARCH)  # cpp_extension's own -gencode
    cpp_extension.load(
        name="sharq_C_jit",
        sources=[os.path.join(CSRC, s) for s in SOURCES],
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=nvcc_flags(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=os.environ.get("SHARQ_JIT_VERBOSE", "0") == "1",
    )
    return f"JIT build in {build_dir}"


def _load() -> tuple[bool, str]:
    import torch

    if _ops_registered():
        return True, "already registered"
    errors = []
    try:
        from sharq_vllm import _C  # type: ignore[attr-defined]  # noqa: F401  (setup.py build)

        return _checked(True, "prebuilt sharq_vllm._C")
    except Exception as e:  # ImportError or an ABI mismatch
        errors.append(f"prebuilt: {e}")
    lib = os.environ.get("SHARQ_EXT_LIB")
    if lib:
        try:
            for path in glob.glob(lib) or [lib]:
                torch.ops.load_library(path)
            return _checked(True, f"library {lib}")
        except Exception as e:
            errors.append(f"SHARQ_EXT_LIB: {e}")
    if os.environ.get("SHARQ_JIT", "1") != "0":
        try:
            return _checked(True, _jit_build())
        except Exception as e:
            errors.append(f"jit: {e}")
    return False, "; ".join(errors) or "disabled"


def _checked(ok: bool, how: str) -> tuple[bool, str]:
    if ok and not _ops_registered():
        return False, f"{how}: library loaded but torch.ops.sharq_C is missing"
    return ok, how


def load_extension() -> tuple[bool, str]:
    """Load the CUDA extension once; returns (ok, how it was loaded or why not)."""
    with _lock:
        if not _result:
            _result.append(_load())
        return _result[0]


def main(argv: list[str]) -> int:
    """``python -m sharq_vllm.kernels.build nvcc-flags|cxx-flags|sources`` (for shell builds)."""
    what = argv[0] if argv else ""
    if what == "nvcc-flags":
        print(" ".join(nvcc_flags()))
    elif what == "cxx-flags":
        print(" ".join(CXX_FLAGS))
    elif what == "sources":
        print(" ".join(os.path.join(CSRC, s) for s in SOURCES))
    else:
        print(f"usage: python -m sharq_vllm.kernels.build nvcc-flags|cxx-flags|sources (got {argv})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
