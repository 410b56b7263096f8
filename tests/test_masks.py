import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharq_vllm.masks import nm_mask


def test_2to4_known():
    x = torch.tensor([1.0, -3.0, 2.0, 0.5, 0.0, 0.0, -1.0, 0.0])
    # second group: -1 wins, then the tie among zeros keeps the lowest index
    assert nm_mask(x, "2:4").tolist() == [False, True, True, False, True, False, True, False]


def test_2to4_ties_keep_lower_index():
    assert nm_mask(torch.ones(4), "2:4").tolist() == [True, True, False, False]
    assert nm_mask(torch.tensor([1.0, 2.0, 1.0, 1.0]), "2:4").tolist() == [True, True, False, False]
    assert nm_mask(torch.tensor([-1.0, 0.0, 1.0, 0.0]), "2:4").tolist() == [True, False, True, False]


def test_4to8_pairs_known():
    x = torch.tensor([1.0, 0.0, 0.0, 5.0, 2.0, -2.0, 0.0, 0.0])
    assert nm_mask(x, "4:8-pairs").tolist() == [False, False, True, True, True, True, False, False]


def test_4to8_pairs_ties_keep_lower_pair():
    assert nm_mask(torch.ones(8), "4:8-pairs").tolist() == [True] * 4 + [False] * 4
    x = torch.tensor([0.0, 0.0, 3.0, 1.0, 0.0, 3.0, 0.0, 3.0])
    assert nm_mask(x, "4:8-pairs").tolist() == [False, False, True, True, True, True, False, False]


def test_dense_keeps_all():
    assert torch.all(nm_mask(torch.randn(3, 16), "dense"))


def test_bad_pattern_and_multiple():
    with pytest.raises(ValueError, match="unknown N:M pattern"):
        nm_mask(torch.zeros(8), "3:4")
    with pytest.raises(ValueError, match="multiple of the 4:8-pairs group"):
        nm_mask(torch.zeros(12), "4:8-pairs")


values = st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, -3.0, 7.0])  # small alphabet: many ties


@given(st.lists(values, min_size=8, max_size=8).map(lambda v: v * 4), st.integers(0, 2**31 - 1))
def test_2to4_invariants(vals, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(vals) * (1 + torch.rand(len(vals), generator=g).round())
    mask = nm_mask(x, "2:4").reshape(-1, 4)
    groups = x.abs().reshape(-1, 4)
    assert torch.all(mask.sum(-1) == 2)
    kept_min = torch.where(mask, groups, torch.full_like(groups, float("inf"))).amin(-1)
    dropped_max = torch.where(~mask, groups, torch.full_like(groups, -1.0)).amax(-1)
    assert torch.all(kept_min >= dropped_max)


@given(st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_4to8_pairs_invariants(rows, groups, ties):
    x = torch.randn(rows, groups * 8)
    if ties:
        x = x.round()
    mask = nm_mask(x, "4:8-pairs").reshape(rows, groups, 4, 2)
    assert torch.all(mask[..., 0] == mask[..., 1])  # whole pairs
    assert torch.all(mask[..., 0].sum(-1) == 2)  # exactly 2 of 4 pairs
    score = x.abs().reshape(rows, groups, 4, 2).amax(-1)
    kept = mask[..., 0]
    kept_min = torch.where(kept, score, torch.full_like(score, float("inf"))).amin(-1)
    dropped_max = torch.where(~kept, score, torch.full_like(score, -1.0)).amax(-1)
    assert torch.all(kept_min >= dropped_max)


@pytest.mark.parametrize("pattern", ["2:4", "4:8-pairs"])
def test_mask_is_batched(pattern):
    x = torch.randn(2, 3, 64)
    assert torch.equal(nm_mask(x, pattern), nm_mask(x.reshape(6, 64), pattern).reshape(2, 3, 64))
