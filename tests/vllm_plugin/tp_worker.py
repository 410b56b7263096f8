"""One rank of the tensor-parallel test (run by test_tensor_parallel.py, 2 processes, gloo).

Each rank builds real vLLM TP layers with SharQ, loads the FULL weights through vLLM's
weight loaders (which shard them), quantizes (tensor amax MAX-all-reduced over the TP group)
and checks its payload is exactly its slice of the TP=1 payload, and that the layer outputs
(after vLLM's own all-reduce / gather) equal the TP=1 reference exactly.
"""

from __future__ import annotations

import sys

import torch


def main(rank: int, world: int, port: int) -> None:
    from tests.vllm_plugin.vllm_env import init_vllm

    init_vllm(world_size=world, rank=rank, port=port)
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    from sharq_vllm import reference
    from sharq_vllm.ops import dequantize_packed
    from sharq_vllm.options import SharQOptionError
    from sharq_vllm.vllm_plugin.config import SharQConfig
    from sharq_vllm.vllm_plugin.linear_method import packed_weight

    cfg = SharQConfig.from_config({"quant_method": "sharq"})
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    g = torch.Generator().manual_seed(0)
    bf = torch.bfloat16

    # row parallel: K split over ranks (256 -> 2 x 128; blocks of 32 never straddle a shard)
    w = torch.randn(64, 256, generator=g).to(bf)
    w[3, 200] = 40.0  # the global amax lives on rank 1's shard only
    bias = torch.randn(64, generator=g).to(bf)
    row = RowParallelLinear(256, 64, bias=True, quant_config=cfg, prefix="model.layers.0.mlp.down_proj",
                            params_dtype=bf, input_is_parallel=False)
    row.weight.weight_loader(row.weight, w)
    row.bias.weight_loader(row.bias, bias)
    row.quant_method.process_weights_after_loading(row)
    full = reference.dequantize_weight(reference.quantize_weight(w))  # the TP=1 payload
    k0 = rank * 128
    mine = dequantize_packed(packed_weight(row))
    assert torch.equal(mine, full[:, k0:k0 + 128]), f"rank {rank}: row-parallel payload is not the TP=1 slice"
    x = torch.randn(5, 256, generator=g).to(bf)
    y, _ = row(x)
    # vLLM's row-parallel output: each rank's partial product (bias added on rank 0) in bf16,
    # summed by the TP all-reduce
    xh = [reference.sharq_activation(x[:, :128]), reference.sharq_activation(x[:, 128:])]
    p0 = (xh[0].float() @ full[:, :128].T + bias.float()).to(bf)
    p1 = (xh[1].float() @ full[:, 128:].T).to(bf)
    torch.testing.assert_close(y, p0 + p1, rtol=0, atol=0)

    # fused qkv, column parallel: output rows split, amax over the whole fused tensor
    qkv = QKVParallelLinear(128, 32, 4, 2, bias=False, quant_config=cfg,
                            prefix="model.layers.0.self_attn.qkv_proj", params_dtype=bf)
    q = torch.randn(128, 128, generator=g).to(bf)
    k = torch.randn(64, 128, generator=g).to(bf)
    v = torch.randn(64, 128, generator=g).to(bf)
    v[60, 5] = -30.0  # amax on rank 1's v shard
    for shard, t in (("q", q), ("k", k), ("v", v)):
        qkv.weight.weight_loader(qkv.weight, t, shard)
    qkv.quant_method.process_weights_after_loading(qkv)
    amax = torch.stack([t.float().abs().amax() for t in (q, k, v)]).amax()
    mine = dequantize_packed(packed_weight(qkv))
    q_r, k_r, v_r = q.chunk(world)[rank], k.chunk(world)[rank], v.chunk(world)[rank]
    expect = reference.dequantize_weight(reference.quantize_weight(torch.cat([q_r, k_r, v_r]), tensor_amax=amax))
    full_qkv = reference.dequantize_weight(reference.quantize_weight(torch.cat([q, k, v])))
    rows = torch.cat([torch.arange(64 * rank, 64 * rank + 64),
                      128 + torch.arange(32 * rank, 32 * rank + 32),
                      192 + torch.arange(32 * rank, 32 * rank + 32)])
    assert torch.equal(mine, expect), f"rank {rank}: qkv payload differs"
    assert torch.equal(mine, full_qkv[rows]), f"rank {rank}: qkv payload is not the TP=1 slice"

    # a shard that is not a multiple of the block: clear error naming the TP split
    try:
        ColumnParallelLinear(128, 64, bias=False, quant_config=cfg, prefix="x", params_dtype=bf)
        RowParallelLinear(96, 64, bias=False, quant_config=cfg,  # 2 shards of 48
                          prefix="model.layers.0.self_attn.o_proj", params_dtype=bf)
    except SharQOptionError as e:
        assert "tensor-parallel" in str(e) and "straddle" in str(e), e
    else:
        raise AssertionError("expected a SharQOptionError for K=96 split over 2 ranks")

    from tests.vllm_plugin.tp_nvfp4 import check_nvfp4_checkpoint

    check_nvfp4_checkpoint(rank, world)
    print(f"rank {rank}: OK", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
