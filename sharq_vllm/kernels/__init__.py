"""Loading the SharQ CUDA extension (``torch.ops.sharq_C.*``, sources in ``csrc/``).

Order: the prebuilt module from ``pip install .`` / ``python setup.py build_ext --inplace``
(``sharq_vllm._C``), then a library named by ``SHARQ_EXT_LIB``, then a JIT build with
``torch.utils.cpp_extension.load`` (needs nvcc and the csrc/ sources: a source checkout;
``SHARQ_JIT=0`` disables it). Nothing here touches CUDA at import time: loading happens on the
first call of :func:`load_extension` (made by the ops' CUDA implementations and by
``sharq_vllm.ops.kernel_path_available``).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading

import torch

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, object] = {}

CSRC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc"
)
SOURCES = ("bindings.cpp", "prep.cu", "gemm_decode.cu", "gemm_wgmma.cu")


def cuda_arch_flags() -> list[str]:
    """-gencode flags from TORCH_CUDA_ARCH_LIST (default 9.0a: Hopper with wgmma/setmaxnreg)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0a").replace(";", " ").split()
    flags = []
    for a in archs:
        a = a.replace("+PTX", "")
        num = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v"]


def _ops_registered() -> bool:
    try:
        return hasattr(torch.ops.sharq_C, "gemm_wgmma")
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
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    cpp_extension.load(
        name="sharq_C_jit",
        sources=[os.path.join(CSRC, s) for s in SOURCES],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS + cuda_arch_flags(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=os.environ.get("SHARQ_JIT_VERBOSE", "0") == "1",
    )
    return f"JIT build in {build_dir}"


def load_extension() -> tuple[bool, str]:
    """Load the CUDA extension once; returns (ok, how it was loaded or why not)."""
    with _lock:
        if "result" in _state:
            return _state["result"]  # type: ignore[return-value]
        result: tuple[bool, str]
        if _ops_registered():
            result = (True, "already registered")
        else:
            errors = []
            result = (False, "")
            try:
                from sharq_vllm import _C  # type: ignore[attr-defined]  # noqa: F401  (setup.py build)

                result = (True, "prebuilt sharq_vllm._C")
            except Exception as e:  # ImportError or an ABI mismatch
                errors.append(f"prebuilt: {e}")
            lib = os.environ.get("SHARQ_EXT_LIB")
            if not result[0] and lib:
                try:
                    for path in glob.glob(lib) or [lib]:
                        torch.ops.load_library(path)
                    result = (True, f"library {lib}")
                except Exception as e:
                    errors.append(f"SHARQ_EXT_LIB: {e}")
            if not result[0] and os.environ.get("SHARQ_JIT", "1") != "0":
                try:
                    result = (True, _jit_build())
                except Exception as e:
                    errors.append(f"jit: {e}")
            if result[0] and not _ops_registered():
                result = (False, "library loaded but torch.ops.sharq_C is missing")
            if not result[0]:
                result = (False, "; ".join(errors) or "disabled")
        _state["result"] = result
        return result


def extension_status() -> tuple[bool, str] | None:
    """The cached result of :func:`load_extension`, or None if it was never called."""
    return _state.get("result")  # type: ignore[return-value]
