"""Batch invariance of SharQ's CPU (reference) path, row by row: is a row's output the same
whether it is computed alone or inside a batch of M rows? (Issue 6 item 4; found by
tests/server/test_robustness.py, where batched greedy outputs diverged at exact logit ties.)

* The activation preparation (per-token scales, sparse backbone + dense residual) is
  row-independent: asserted bit for bit.
* The FP32 GEMM in ``reference.apply_linear`` (``x_hat.float() @ W.T``) is not: MKL/oneDNN
  pick other kernels and reduction orders for other row counts, so rows differ in the last
  bit, which FP4 activation rounding downstream can amplify into a greedy flip at a near-tie.
  Marked xfail until the reference GEMM is made batch-invariant (e.g. accumulating in float64
  then rounding: 0 mismatches measured on this machine at M in {2, 3, 8, 16, 64}).
"""

from __future__ import annotations

import pytest
import torch

from sharq_vllm import reference


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(1536, 576, dtype=torch.bfloat16) * 0.05
    x = torch.randn(16, 576, dtype=torch.bfloat16) * torch.linspace(0.1, 20, 576).to(torch.bfloat16)
    return x, w


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_activation_preparation_is_row_invariant(fmt: str) -> None:
    x, _ = _data()
    batched = reference.sharq_activation(x, fmt)
    alone = torch.cat([reference.sharq_activation(x[i : i + 1], fmt) for i in range(len(x))])
    assert torch.equal(batched, alone)


@pytest.mark.xfail(reason="reference.apply_linear's FP32 GEMM rounds differently for other row "
                   "counts (MKL kernel choice); see the module docstring", strict=False)
def test_reference_linear_is_row_invariant() -> None:
    x, w = _data()
    payload = reference.quantize_weight(w)
    for m in (2, 8, 16):
        batched = reference.apply_linear(x[:m], payload)
        alone = torch.cat([reference.apply_linear(x[i : i + 1], payload) for i in range(m)])
        assert torch.equal(batched, alone), f"M={m}: {(batched != alone).sum().item()} outputs differ"
