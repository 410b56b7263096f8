"""The Hopper CUDA kernels' Python side.

* :mod:`.build`: sources, architecture and compiler flags (one definition for setup.py, the JIT
  build and tools/gpu/prebuild_ext.sh), and loading the extension (``torch.ops.sharq_C.*``).
* :mod:`.dispatch`: which implementation serves a SharQ linear (kernels or PyTorch reference,
  and which GEMM kernel for M rows), from one table that also describes itself.
* :mod:`.layout`: the tiled weight layout the CUDA GEMMs read.

Importing this package touches neither CUDA nor torch.
"""

from typing import Any

__all__ = ["load_extension"]


def __getattr__(name: str) -> Any:
    # lazy, so that `python -m sharq_vllm.kernels.build` does not import .build twice
    if name == "load_extension":
        from .build import load_extension

        return load_extension
    raise AttributeError(name)
