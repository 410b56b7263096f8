"""CPU replays of the preparation kernel's bit tricks (sharq_vllm/csrc/sharq_common.cuh, prep.cu).

The kernel never forms E2M1 codes on its serving path: ``e2m1_round`` rounds a scaled value to
the E2M1 grid with one FP32 add and subtract of a binade-dependent constant, and the debug
outputs take the code back from that value (``e2m1_code_of``). These tests replay the same
integer and FP32 operations in PyTorch (IEEE FP32 on CPU, as on the GPU with the kernel's
``__fadd_rn`` / ``__fsub_rn``) against ``fp4.e2m1_encode`` / ``e2m1_decode`` over every bf16 value,
every rounding threshold and its neighbouring floats, and random FP32 bit patterns. The GPU tests
(tests/gpu/test_prep_gpu.py) check the compiled kernel bit for bit against the reference.
"""

from __future__ import annotations

import torch

from sharq_vllm.fp4 import _THRESHOLDS, E2M1_VALUES, e2m1_decode, e2m1_encode


def _bits(v: torch.Tensor) -> torch.Tensor:
    return v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _float(b: torch.Tensor) -> torch.Tensor:
    return (b & 0xFFFFFFFF).to(torch.uint32).view(torch.int32).view(torch.float32)


def emulate_e2m1_round(v: torch.Tensor) -> torch.Tensor:
    """sharq_common.cuh::e2m1_round on float32 ``v``."""
    u = _bits(v)
    c = _float(torch.clamp((u & 0x7F800000) + (22 << 23) + 0x00400000, min=0x4AC00000))
    r = torch.fmin(((v + c) - c).abs(), torch.tensor(6.0))  # fminf: NaN gives 6
    return _float(_bits(r) | (u & 0x80000000))


def emulate_e2m1_code_of(q: torch.Tensor) -> torch.Tensor:
    """sharq_common.cuh::e2m1_code_of on grid values ``q``."""
    u = _bits(q)
    a = u & 0x7FFFFFFF
    m = torch.where(a >= 0x3F800000, (a >> 22) - 252, (a != 0).to(torch.int64))
    return (m | ((u >> 28) & 8)).to(torch.uint8)


def _cases() -> torch.Tensor:
    every_bf16 = torch.arange(0, 1 << 16, dtype=torch.int64).to(torch.int16).view(torch.bfloat16)
    t = torch.tensor(_THRESHOLDS + E2M1_VALUES + (8.0, 7.999, 1e30, 3e38), dtype=torch.float32)
    tb = _bits(t)
    near = torch.cat(
        [_float(tb + d) for d in range(-3, 4)]
    )  # each threshold and 3 floats either side
    g = torch.Generator().manual_seed(0)
    rand = _float(
        torch.randint(0, 0x41800000, (1 << 21,), generator=g, dtype=torch.int64)
    )  # [0, 16)
    rand_any = _float(torch.randint(0, 0x7F800000, (1 << 18,), generator=g, dtype=torch.int64))
    v = torch.cat([every_bf16.float(), near, rand, rand_any])
    v = torch.cat([v, -v])
    return v[torch.isfinite(v)]


def test_e2m1_round_is_encode_then_decode():
    v = _cases()
    want = e2m1_decode(e2m1_encode(v))
    got = emulate_e2m1_round(v)
    bad = (_bits(got) != _bits(want)).nonzero().flatten()
    assert bad.numel() == 0, (
        f"{bad.numel()} of {v.numel()} differ, e.g. v={v[bad[:4]].tolist()} got "
        f"{got[bad[:4]].tolist()} want {want[bad[:4]].tolist()}"
    )
    # -0 for small negatives (the sign bit the hardware conversion keeps)
    assert _bits(emulate_e2m1_round(torch.tensor([-0.1, -0.0])))[0] == 0x80000000


def test_e2m1_code_of_round_is_encode():
    v = _cases()
    assert torch.equal(emulate_e2m1_code_of(emulate_e2m1_round(v)), e2m1_encode(v))


def test_e2m1_round_differs_only_on_nan():
    # the documented exception the kernel branches around: NaN (0 * an infinite 1/d) gives 6,
    # encode + decode gives +0
    nan = torch.tensor([float("nan")])
    assert emulate_e2m1_round(nan).item() == 6.0
    assert _bits(e2m1_decode(e2m1_encode(nan))).item() == 0
