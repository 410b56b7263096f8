"""The NVFP4-checkpoint part of one tensor-parallel rank (called by tp_worker.py): the
per-member-scale llm-compressor fixture loaded into vLLM's TP layers through their own loaders;
each rank multiplies with exactly its slice of the TP=1 weights (every member with its own
tensor scale), and its column-parallel output is SharQ's activations times that slice."""

from __future__ import annotations

import torch


def check_nvfp4_checkpoint(rank: int, world: int) -> None:
    from sharq_vllm import reference
    from sharq_vllm.checkpoint.nvfp4 import read_nvfp4_payloads

    from .nvfp4_layers import FIXTURES, HEAD_DIM, INTER, MEMBERS, PREFIX, sharq_layers, sharq_weight

    assert world == 2
    name = "llmc-nvfp4-unfused"
    _, payloads = read_nvfp4_payloads(FIXTURES / name)
    full = {f: torch.cat([reference.dequantize_weight(payloads[PREFIX + m]) for m in ms]) for f, ms in MEMBERS.items()}
    layers = sharq_layers(name)
    q = slice(rank * HEAD_DIM, (rank + 1) * HEAD_DIM)  # 2 query heads: one per rank
    kv = torch.arange(2 * HEAD_DIM, 4 * HEAD_DIM)  # the one KV head is replicated on both ranks
    half = INTER // 2
    expect = {
        "self_attn.qkv_proj": torch.cat([full["self_attn.qkv_proj"][q], full["self_attn.qkv_proj"][kv]]),
        "self_attn.o_proj": full["self_attn.o_proj"][:, q],
        "mlp.gate_up_proj": torch.cat([full["mlp.gate_up_proj"][rank * half:(rank + 1) * half],
                                       full["mlp.gate_up_proj"][INTER + rank * half:INTER + (rank + 1) * half]]),
        "mlp.down_proj": full["mlp.down_proj"][:, rank * half:(rank + 1) * half],
    }
    for fused, layer in layers.items():
        assert torch.equal(sharq_weight(layer), expect[fused]), f"rank {rank}: {fused} is not the TP=1 slice"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 64, generator=g).to(torch.bfloat16)
    for fused in ("self_attn.qkv_proj", "mlp.gate_up_proj"):
        y, _ = layers[fused](x)
        want = (reference.sharq_activation(x, "nvfp4", "4:8-pairs").double() @ expect[fused].double().T)
        assert torch.equal(y, want.float().to(torch.bfloat16)), f"rank {rank}: {fused} output"
