"""Building and loading the SharQ CUDA extension (``torch.ops.sharq_C.*``). The sources live in
the package, ``sharq_vllm/csrc/``, so every install (wheel, sdist, editable) carries them.

One definition of the sources, the target architecture and the compiler flags, shared by
``setup.py`` (which loads this file by path: it imports nothing but the standard library at the
top), the build at first use below and ``tools/gpu/prebuild_ext.sh`` (``python -m
sharq_vllm.kernels.build nvcc-flags``).

Loading order (:func:`load_extension`, first call only; nothing touches CUDA at import):

1. ``sharq_vllm._C``, compiled at install time (``pip install --no-build-isolation .`` or
   ``python setup.py build_ext --inplace``) against the torch present then;
2. a library named by ``SHARQ_EXT_LIB`` (``tools/gpu/prebuild_ext.sh``);
3. compiled at first use (as FlashInfer and DeepGEMM do) from ``sharq_vllm/csrc/`` with
   ``torch.utils.cpp_extension`` into a cache folder keyed by what produced it
   (:func:`cache_key`: torch version, its CUDA version, target architectures, flags, sha256 of the
   sources), under ``SHARQ_BUILD_DIR`` or ``~/.cache/sharq_vllm/kernels``: one log line
   (``sharq: compiling SharQ kernels for sm_90a ... ~1 min``) the first time, none after; a torch
   or source change compiles a new copy. Needs nvcc, ninja and a C++ compiler; what is missing
   is named in the reason (:func:`jit_blockers`). ``SHARQ_JIT=0`` disables it.

``python -m sharq_vllm.kernels.build check`` reports all of this (and loads or compiles the
kernels where it can).
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import threading

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SOURCES = ("bindings.cpp", "prep.cu", "gemm.cu", "gemm_wgmma.cu", "gemm_wgmma_rs.cu")
HEADERS = ("sharq_common.cuh", "sharq_kernels.h", "gemm_tile.cuh", "sm90_async.cuh", "wgmma_ops.cuh")
#: the kernels use Hopper's thread-block clusters, distributed shared memory and programmatic
#: dependent launch: sm_90a and nothing else (dispatch.py serves them on capability 9.0 only)
ARCH = "9.0a"
CXX_FLAGS = ["-O3", "-std=c++17"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v"]
REBUILD_HINT = "pip install --no-build-isolation --no-deps --force-reinstall ."

_lock = threading.Lock()
_result: list[tuple[bool, str]] = []


def arch_list() -> list[str]:
    """The architectures to build: ``TORCH_CUDA_ARCH_LIST`` (torch's variable, also read by its
    cpp_extension) or :data:`ARCH`."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", ARCH).replace(";", " ").split()


def sm_names(archs: list[str] | None = None) -> str:
    """``9.0a`` -> ``sm_90a`` (what the log lines say)."""
    return ",".join("sm_" + a.replace("+PTX", "").replace(".", "") for a in archs or arch_list())


def gencode_flags(archs: list[str] | None = None) -> list[str]:
    """``-gencode`` flags for nvcc, e.g. ``-gencode=arch=compute_90a,code=sm_90a``."""
    flags = []
    for a in archs if archs is not None else arch_list():
        num = a.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def nvcc_flags() -> list[str]:
    return [*NVCC_FLAGS, *gencode_flags()]


def missing_sources() -> list[str]:
    return [f for f in (*SOURCES, *HEADERS) if not os.path.isfile(os.path.join(CSRC, f))]


def source_digest() -> str:
    """sha256 over the kernel sources and headers (names and bytes)."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        with open(os.path.join(CSRC, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def cache_key(torch_version: str, cuda_version: str | None, archs: list[str] | None = None) -> str:
    """The name of the cache folder for one build: readable parts + a hash of everything that
    goes into the binary (torch and CUDA versions, architectures, flags, the sources)."""
    archs = archs or arch_list()
    what = {"torch": torch_version, "cuda": cuda_version, "archs": archs, "cxx": CXX_FLAGS,
            "nvcc": [*NVCC_FLAGS, *gencode_flags(archs)], "sources": source_digest()}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    readable = f"torch{torch_version}-cu{cuda_version}-{sm_names(archs).replace(',', '_')}"
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', readable)}-{digest}"


def cache_root() -> str:
    return os.environ.get("SHARQ_BUILD_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sharq_vllm", "kernels")


def nvcc_path() -> str | None:
    """nvcc as torch's cpp_extension will find it (``CUDA_HOME``/``CUDA_PATH``, else PATH)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def jit_blockers() -> list[str]:
    """What keeps the kernels from being compiled at first use here (empty: nothing)."""
    out = []
    missing = missing_sources()
    if missing:
        out.append(f"kernel sources missing from {CSRC}: {', '.join(missing)} (reinstall sharq-vllm)")
    try:
        import torch
    except ImportError:
        return [*out, "torch is not installed"]
    cuda = torch.version.cuda
    if cuda is None:
        out.append(f"torch {torch.__version__} is a CPU build (no CUDA): the kernels need a CUDA torch")
    if nvcc_path() is None:
        want = f" {cuda}" if cuda else ""
        out.append(f"nvcc not found (no CUDA_HOME, no nvcc on PATH): install the CUDA toolkit{want} "
                   "matching torch's CUDA, or set CUDA_HOME")
    if shutil.which("ninja") is None and not _ninja_module():
        out.append("ninja not found (pip install ninja)")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        out.append("no C++ compiler (c++ / $CXX) on PATH")
    return out


def _ninja_module() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        return bool(is_ninja_available())
    except Exception:
        return False


def _ops_registered() -> bool:
    import torch

    try:
        return hasattr(torch.ops.sharq_C, "gemm_mma")
    except Exception:
        return False


def _jit_build() -> str:
    import torch
    from torch.utils import cpp_extension

    from .. import log

    blockers = jit_blockers()
    if blockers:
        raise RuntimeError("cannot compile them at first use: " + "; ".join(blockers))
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ARCH)  # cpp_extension's own -gencode
    key = cache_key(torch.__version__, torch.version.cuda)
    build_dir = os.path.join(cache_root(), key)
    os.makedirs(build_dir, exist_ok=True)
    name = "sharq_C_" + key.rsplit("-", 1)[-1]
    if glob.glob(os.path.join(build_dir, name + "*.so")):
        log.info("sharq: SharQ kernels for %s from the cache %s", sm_names(), build_dir)
    else:
        log.info("sharq: compiling SharQ kernels for %s (torch %s, CUDA %s), ~1 min, once; cached in %s",
                 sm_names(), torch.__version__, torch.version.cuda, build_dir)
    # concurrent processes (TP ranks) wait on cpp_extension's lock file in build_dir: one compiles
    cpp_extension.load(
        name=name,
        sources=[os.path.join(CSRC, s) for s in SOURCES],
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=nvcc_flags(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=os.environ.get("SHARQ_JIT_VERBOSE", "0") == "1",
    )
    return f"compiled at first use, cached in {build_dir}"


def _load() -> tuple[bool, str]:
    import torch

    if _ops_registered():
        return True, "already registered"
    errors = []
    if importlib.util.find_spec("sharq_vllm._C") is None:
        errors.append("no prebuilt sharq_vllm._C (the wheel was built without torch, e.g. under "
                      "pip's build isolation)")
    else:
        try:
            importlib.import_module("sharq_vllm._C")  # setup.py's build
            return _checked(True, "prebuilt sharq_vllm._C")
        except Exception as e:  # an ABI mismatch: built against another torch / CUDA
            errors.append(f"prebuilt sharq_vllm._C does not load (built for another torch or CUDA? "
                          f"rebuild it: {REBUILD_HINT}): {e}")
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
            errors.append(f"{e}")
    else:
        errors.append("compiling at first use is disabled (SHARQ_JIT=0)")
    return False, "; ".join(errors)


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


def check() -> int:
    """``python -m sharq_vllm.kernels.build check``: what the kernels need and what is here;
    loads (or compiles) them where possible. Exit status 0 when they load."""
    missing = missing_sources()
    print(f"sources: {CSRC} ({len(SOURCES) + len(HEADERS) - len(missing)} of "
          f"{len(SOURCES) + len(HEADERS)} files{'; missing ' + ', '.join(missing) if missing else ''})")
    try:
        import torch
    except ImportError:
        print("torch: not installed\nkernels: not available (torch is not installed)")
        return 1
    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'})")
    gpu = torch.cuda.is_available()
    print("GPU: " + (f"{torch.cuda.get_device_name(0)}, capability "
                     f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}" if gpu else "none"))
    print(f"nvcc: {nvcc_path() or 'not found'}; target: {sm_names()}")
    if not missing:
        print(f"first-use cache: {os.path.join(cache_root(), cache_key(torch.__version__, torch.version.cuda))}")
    if not gpu:
        blockers = jit_blockers()
        print("kernels: not available here (no CUDA device)"
              + (f"; compiling at first use would also need: {'; '.join(blockers)}" if blockers else ""))
        return 1
    ok, how = load_extension()
    print(f"kernels: {'loaded, ' if ok else 'not available: '}{how}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    """``python -m sharq_vllm.kernels.build nvcc-flags|cxx-flags|sources|check``."""
    what = argv[0] if argv else ""
    if what == "nvcc-flags":
        print(" ".join(nvcc_flags()))
    elif what == "cxx-flags":
        print(" ".join(CXX_FLAGS))
    elif what == "sources":
        print(" ".join(os.path.join(CSRC, s) for s in SOURCES))
    elif what == "check":
        return check()
    else:
        print(f"usage: python -m sharq_vllm.kernels.build nvcc-flags|cxx-flags|sources|check (got {argv})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
