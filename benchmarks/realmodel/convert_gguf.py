"""GGUF -> 16-bit safetensors folder on a machine without sharq_vllm's asset cache (the GPU
machines have no network: the GGUF travels in parts). The conversion is
``sharq_vllm.assets.convert_gguf``, the same one the asset cache uses.

    python -m benchmarks.realmodel.convert_gguf FILE.gguf OUT_DIR     # from the repository root
"""

from __future__ import annotations

import sys
from pathlib import Path

from sharq_vllm.assets import convert_gguf


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    convert_gguf(gguf, out)
    print(f"converted {gguf.name} -> {out}")


if __name__ == "__main__":
    main()
