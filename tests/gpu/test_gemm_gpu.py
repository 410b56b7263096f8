"""GPU: the Hopper GEMM kernels (gemm_decode.cu for M <= 16, gemm_wgmma.cu above) against an
FP32 matmul of the dequantized operands, on fresh heavy-tailed data, NaN-poisoned outputs.

Every tile plan of the wgmma kernel (token tile 32..256 x split-K cluster 1..8) and both decode
fragment widths (M <= 8, <= 16) are checked, including the edges of each bucket, odd N (padding
strips), K that splits unevenly over the cluster, bias / no bias, bf16 / fp16, 16/32 weight
blocks; repeated runs must be bitwise identical (fixed-order split-K, no atomics)."""

from __future__ import annotations

import pytest
import torch
from gpu_util import DTYPES, GPU_MARKS, heavy, packed_weight, rel, require_kernels

from sharq_vllm.reference import dequantize_weight, quantize_weight

pytestmark = GPU_MARKS


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    require_kernels()


def _run(kind: str, x, packed, bias, tok: int = 0, cl: int = 0):
    m, n = x.shape[0], packed.n
    y = torch.full((m, n), float("nan"), dtype=x.dtype, device="cuda")
    args = (x, packed.qweight, packed.scales, packed.tensor_scale, bias, y, packed.n_pad, packed.block)
    if kind == "decode":
        torch.ops.sharq_C.gemm_decode(*args, 0, 0)
    else:
        torch.ops.sharq_C.gemm_wgmma(*args, tok, cl)
    return y


def _reference(x, payload, bias):
    ref = x.float() @ dequantize_weight(payload).cuda().T
    return ref + bias.float() if bias is not None else ref


# Llama-3.1-8B linears, a Qwen2.5-1.5B down_proj (K = 8960: 140 k-tiles), padding (N = 40, 1552)
SHAPES = [(6144, 4096), (4096, 14336), (28672, 4096), (1536, 8960), (40, 576), (1552, 576)]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 15, 16])
def test_decode_kernel(n, k, m):
    payload, packed = packed_weight(n, k)
    x = heavy(m, k, torch.bfloat16)
    bias = heavy(1, n, torch.bfloat16).reshape(n) if m % 2 else None
    y = _run("decode", x, packed, bias)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert rel(y, _reference(x, payload, bias)) < 1e-2
    assert torch.equal(y, _run("decode", x, packed, bias)), "decode GEMM is not deterministic"


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [17, 32, 33, 64, 65, 128, 129, 255, 256, 257, 1000, 2048])
def test_wgmma_kernel_auto_plan(n, k, m):
    if n * k > 6144 * 4096 and m > 1000:
        pytest.skip("covered at smaller M (keeps the GPU run short)")
    payload, packed = packed_weight(n, k)
    x = heavy(m, k, torch.bfloat16)
    bias = heavy(1, n, torch.bfloat16).reshape(n) if m % 2 else None
    y = _run("wgmma", x, packed, bias)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert rel(y, _reference(x, payload, bias)) < 1e-2


@pytest.mark.parametrize("tok", [32, 64, 128, 256])
@pytest.mark.parametrize("cl", [1, 2, 4, 8])
@pytest.mark.parametrize("m", [5, 70, 300])
def test_wgmma_every_plan(tok, cl, m):
    n, k = 1552, 4160  # 97 strips (13 blocks, the last partial), 65 k-tiles: uneven split-K
    payload, packed = packed_weight(n, k)
    x = heavy(m, k, torch.bfloat16)
    bias = heavy(1, n, torch.bfloat16).reshape(n)
    y = _run("wgmma", x, packed, bias, tok, cl)
    assert torch.isfinite(y).all()
    assert rel(y, _reference(x, payload, bias)) < 1e-2
    assert torch.equal(y, _run("wgmma", x, packed, bias, tok, cl)), "split-K is not deterministic"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [32, 16])
@pytest.mark.parametrize("m", [1, 9, 33, 200])
def test_sm90_dtypes_blocks(dtype, block, m):
    n, k = 272, 1024
    payload, packed = packed_weight(n, k, block=block)
    x = heavy(m, k, dtype, scale=4.0)
    bias = heavy(1, n, dtype).reshape(n)
    kind = "decode" if m <= 16 else "wgmma"
    y = _run(kind, x, packed, bias)
    assert torch.isfinite(y).all()
    assert rel(y, _reference(x, payload, bias)) < 1e-2


@pytest.mark.parametrize("kind,m", [("decode", 5), ("decode", 16), ("wgmma", 40), ("wgmma", 300)])
def test_sm90_exact_small_integers(kind, m):
    # integer operands: every product and partial sum is exact in FP32, so the kernel must match
    # the FP32 reference up to the final scaling and rounding (catches decode / k-order bugs)
    from sharq_vllm import ops

    n, k = 192, 2048
    w = torch.randint(-6, 7, (n, k)).float()
    w[:, 0] = 6.0
    payload = quantize_weight(w, block=32)
    packed = ops.pack_weight(payload, "cuda")
    x = torch.randint(-3, 4, (m, k)).to(torch.bfloat16).cuda()
    y = _run(kind, x, packed, None).float()
    assert rel(y, _reference(x, payload, None)) < 4e-3


def test_decode_and_wgmma_agree_at_16():
    _, packed = packed_weight(4096, 4096)
    x = heavy(16, 4096, torch.bfloat16)
    a = _run("decode", x, packed, None)
    b = _run("wgmma", x, packed, None)
    assert rel(a, b) < 4e-3  # FP32 sums in another order, then one bf16 rounding


def test_strided_rows():
    """x rows with a stride larger than K (a slice of a wider activation)."""
    payload, packed = packed_weight(512, 1024)
    wide = heavy(40, 1536, torch.bfloat16)
    x = wide[:, :1024]
    for m, kind in ((8, "decode"), (40, "wgmma")):
        y = _run(kind, x[:m], packed, None)
        assert rel(y, _reference(x[:m].contiguous(), payload, None)) < 1e-2
