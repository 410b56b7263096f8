"""Batch invariance of SharQ's CPU (reference) path, row by row: is a row's output the same
whether it is computed alone or inside a batch of M rows? (Issue 6 item 4; found by
tests/server/test_robustness.py, where batched greedy outputs diverged at exact logit ties.)

* The activation preparation (per-token scales, sparse backbone + dense residual) is
  row-independent: asserted bit for bit.
* The reference GEMM (``reference.gemm``, behind ``reference.apply_linear`` and the CPU impl of
  ``torch.ops.sharq.gemm``) accumulates in float64 and rounds once to FP32: asserted bit for
  bit. An FP32 GEMM (``x_hat.float() @ W.T``, the earlier reference) is not: MKL/oneDNN pick
  other kernels and reduction orders for other row counts, so rows differ in the last bit,
  which FP4 activation rounding downstream can amplify into a greedy flip at a near-tie.
  The one exception ``reference.gemm`` documents: an output whose exact sum lies within float64's
  summation error of an FP32 rounding boundary may round either way (fresh random data meets one
  in a few hundred runs: seed 225431044, float32, [1536, 576]). The tests accept a difference only
  when it is such a tie, checked against the exact sum (``math.fsum`` of the exact products).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from sharq_vllm import ops, reference

_SEED = int.from_bytes(os.urandom(4), "little")  # fresh data every run; printed on failure


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(1536, 576, dtype=torch.bfloat16) * 0.05
    x = torch.randn(16, 576, dtype=torch.bfloat16) * torch.linspace(0.1, 20, 576).to(torch.bfloat16)
    return x, w


def _heavy(m: int, k: int, seed: int, scale: float = 60.0) -> torch.Tensor:
    """Student-t(3) rows with a few outlier channels (FP32)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(m, k, generator=g) / torch.randn(m, k, 3, generator=g).pow(2).mean(-1).sqrt()
    t[:, torch.randperm(k, generator=g)[:4]] *= scale
    return t


def _documented_tie(x_row: torch.Tensor, w_row: torch.Tensor, bias: float, got: float, want: float,
                    dtype: torch.dtype) -> bool:
    """Whether ``got`` != ``want`` is reference.gemm's documented tie: an FP32 rounding boundary lies
    within float64's summation error (2 (K + 2) 2^-53 sum |terms|) of the exact sum of the row's
    products and bias, and the two outputs are the ``dtype`` roundings of the two FP32 values on
    either side of it. The products (<= 24 x 24 significant bits) are exact in float64."""
    terms = [*(x_row.double() * w_row.double()).tolist(), bias]
    exact = math.fsum(terms)
    err = 2 * (len(terms) + 1) * 2.0**-53 * math.fsum(abs(t) for t in terms)
    lo, hi = (torch.tensor(v, dtype=torch.float64).float() for v in (exact - err, exact + err))
    return bool(lo != hi) and {got, want} == {lo.to(dtype).item(), hi.to(dtype).item()}


def _same_but_ties(got: torch.Tensor, want: torch.Tensor, x_hat: torch.Tensor, w: torch.Tensor,
                   bias: torch.Tensor | None, what: str) -> None:
    """got == want bit for bit ([M, N] rows of x_hat [M, K] times the FP32 weight w [N, K]),
    except at documented ties (module docstring)."""
    diff = (got != want).nonzero().tolist()
    other = [(r, c) for r, c in diff if not _documented_tie(
        x_hat[r], w[c], 0.0 if bias is None else float(bias[c]), got[r, c].item(), want[r, c].item(), got.dtype)]
    assert not other, f"{what}: {len(other)} outputs differ beyond ties, first {other[:3]}"
    assert len(diff) <= 2, f"{what}: {len(diff)} ties, more than chance gives"


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_activation_preparation_is_row_invariant(fmt: str) -> None:
    x, _ = _data()
    batched = reference.sharq_activation(x, fmt)
    alone = torch.cat([reference.sharq_activation(x[i : i + 1], fmt) for i in range(len(x))])
    assert torch.equal(batched, alone)


def test_reference_linear_is_row_invariant() -> None:
    x, w = _data()
    payload = reference.quantize_weight(w)
    for m in (2, 8, 16):
        batched = reference.apply_linear(x[:m], payload)
        alone = torch.cat([reference.apply_linear(x[i : i + 1], payload) for i in range(m)])
        assert torch.equal(batched, alone), f"M={m}: {(batched != alone).sum().item()} outputs differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,k", [(1536, 576), (256, 4096)])
def test_reference_gemm_row_is_the_same_in_any_batch(dtype: torch.dtype, n: int, k: int) -> None:
    """Each row of a batch of M in {1, 2, 3, 8, 17, 64}, at any offset, has the bits it has
    alone: the reference GEMM and the CPU op both (fresh heavy-tailed data, with a bias)."""
    seed = _SEED + n + k + {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}[dtype]
    payload = reference.quantize_weight(_heavy(n, k, seed, scale=10.0) * 0.02)
    packed = ops.pack_weight(payload, "cpu")
    x = reference.sharq_activation(_heavy(64 + 17, k, seed + 1).to(dtype))
    bias = (_heavy(1, n, seed + 2).reshape(n) * 0.1).to(dtype)
    w = reference.dequantize_weight(payload)
    alone = torch.cat([reference.gemm(x[i : i + 1], payload, bias) for i in range(len(x))])
    assert torch.isfinite(alone).all()
    for m in (1, 2, 3, 8, 17, 64):
        for off in (0, len(x) - m):
            rows = slice(off, off + m)
            for name, y in (
                ("reference.gemm", reference.gemm(x[rows], payload, bias)),
                ("sharq.gemm op", ops.sharq_gemm(x[rows], packed, bias)),
            ):
                _same_but_ties(y, alone[rows], x[rows], w, bias, f"{name} M={m} offset={off} (seed {seed})")


def test_reference_gemm_bits_do_not_depend_on_the_weight_slicing(monkeypatch) -> None:
    """The weight is dequantized a slice of output rows at a time (bounded by bytes, so the
    slices follow N and K): other slicings give the same bits."""
    payload = reference.quantize_weight(_heavy(200, 512, _SEED, scale=10.0) * 0.02)
    x = reference.sharq_activation(_heavy(9, 512, _SEED + 1).to(torch.bfloat16))
    whole = reference.gemm(x, payload)
    w = reference.dequantize_weight(payload)
    for rows in (16, 48, 199):
        monkeypatch.setitem(reference.GEMM_SLICE_BYTES, "cpu", rows * 512 * 8)
        _same_but_ties(reference.gemm(x, payload), whole, x, w, None, f"{rows}-row slices (seed {_SEED})")


def test_nonfinite_row_stays_in_its_row() -> None:
    """A NaN/Inf input row gives an all-NaN output row (docs/NUMERICS.md) and leaves the other
    rows' bits as they are alone."""
    payload = reference.quantize_weight(_heavy(96, 256, _SEED, scale=10.0) * 0.02)
    x = _heavy(8, 256, _SEED + 1).to(torch.bfloat16)
    x[3, 7] = float("inf")
    x[5, 0] = float("nan")
    y = reference.apply_linear(x, payload)
    assert torch.isnan(y[[3, 5]]).all()
    w = reference.dequantize_weight(payload)
    for i in (0, 1, 2, 4, 6, 7):
        x_hat = reference.sharq_activation(x[i : i + 1])
        _same_but_ties(y[i : i + 1], reference.apply_linear(x[i : i + 1], payload), x_hat, w, None, f"row {i} (seed {_SEED})")
