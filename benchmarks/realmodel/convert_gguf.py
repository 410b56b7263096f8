"""GGUF -> 16-bit safetensors folder on a machine without sharq_vllm's asset cache (the GPU
machines have no network: the GGUF travels in parts). The conversion is
``sharq_vllm.assets.convert_gguf``, the same one the asset cache uses.

    python -m benchmarks.realmodel.convert_gguf FILE.gguf OUT_DIR [TOKENIZER_DIR]   # from the repository root

TOKENIZER_DIR: tokenizer files converted on another machine (tools/gpu/gpu_session.sh carries the
CPU machine's), used instead of this machine's conversion and checked against the GGUF metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sharq_vllm.assets import convert_gguf


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    convert_gguf(gguf, out, tokenizer_dir=Path(sys.argv[3]) if len(sys.argv) > 3 else None)
    print(f"converted {gguf.name} -> {out}")


if __name__ == "__main__":
    main()
