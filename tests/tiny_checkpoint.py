"""A tiny random Llama-shaped 16-bit Hugging Face checkpoint for checkpoint/CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_config(
    hidden: int = 64, inter: int = 128, heads: int = 4, kv_heads: int = 2, layers: int = 2, vocab: int = 96
) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def llama_tensors(config: dict, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, i = config["hidden_size"], config["intermediate_size"]
    nh, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config["head_dim"]
    shapes = {
        "self_attn.q_proj": (nh * hd, h),
        "self_attn.k_proj": (kv * hd, h),
        "self_attn.v_proj": (kv * hd, h),
        "self_attn.o_proj": (h, nh * hd),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    t = {
        "model.embed_tokens.weight": rnd(config["vocab_size"], h, scale=1.0),
        "model.norm.weight": torch.ones(h, dtype=dtype),
        "lm_head.weight": rnd(config["vocab_size"], h),
    }
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        # different magnitudes per projection, so a shared amax differs from each member's own
        for j, (name, shape) in enumerate(shapes.items()):
            t[f"{p}{name}.weight"] = rnd(*shape, scale=0.02 * (j + 1))
        t[f"{p}input_layernorm.weight"] = torch.ones(h, dtype=dtype)
        t[f"{p}post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
    return t


def write_checkpoint(
    path: Path,
    config: dict | None = None,
    *,
    shards: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    tensors: dict[str, torch.Tensor] | None = None,
    extra_files: bool = True,
) -> Path:
    """Write config.json + safetensors (``shards`` > 1: round-robin over files, so q/k/v of a
    layer land in different shards, with model.safetensors.index.json)."""
    config = dict(config or llama_config())
    if dtype == torch.float32:
        config["torch_dtype"] = "float32"
    tensors = tensors if tensors is not None else llama_tensors(config, dtype)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        parts: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
        weight_map = {}
        for k, name in enumerate(sorted(tensors)):
            parts[k % shards][name] = tensors[name]
            weight_map[name] = f"model-{k % shards + 1:05d}-of-{shards:05d}.safetensors"
        for s, part in enumerate(parts):
            save_file(part, str(path / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"), metadata={"format": "pt"})
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )
    if extra_files:
        (path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
        (path / "tokenizer_config.json").write_text('{"model_max_length": 128}')
        (path / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2}')
        (path / "special_tokens_map.json").write_text("{}")
    return path
