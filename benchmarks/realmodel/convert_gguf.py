"""GGUF -> 16-bit safetensors folder on a machine without sharq_vllm's asset cache (the GPU
machines have no network: the GGUF travels in parts). Same transformers calls as
sharq_vllm.assets; tolerant of transformers 4.x (torch_dtype) and 5.x (dtype).

    python benchmarks/realmodel/convert_gguf.py FILE.gguf OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    model.hf_quantizer = None  # the loader dequantized every tensor: save as plain 16-bit
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    print(f"converted {gguf.name} -> {out}")


if __name__ == "__main__":
    main()
