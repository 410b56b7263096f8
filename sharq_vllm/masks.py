"""N:M masks that pick SharQ's sparse backbone.

``2:4``       in every group of 4 channels keep the 2 largest |x| (Hopper's sparse pattern).
``4:8-pairs`` in every group of 8 channels score the 4 adjacent pairs by their larger |x| and
              keep the best 2 pairs (Blackwell's sparse-FP4 pattern; the paper's NVFP4 choice).
``dense``     keep everything (the paper's dense+dense ablation).

Tie rule (deterministic, shared by every kernel): among equal scores the lower index wins.
Element (or pair) i is kept iff #{j: s_j > s_i} + #{j < i: s_j == s_i} < N.
"""

from __future__ import annotations

import torch

#: the patterns, the paper default (with NVFP4) first
PATTERNS = ("4:8-pairs", "2:4", "dense")

# pattern -> (channels per group, units per group, units kept, channels per unit)
_GEOMETRY = {"2:4": (4, 4, 2, 1), "4:8-pairs": (8, 4, 2, 2)}


def check_pattern(pattern: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown N:M pattern {pattern!r}; expected one of {list(PATTERNS)}")


def group_size(pattern: str) -> int:
    check_pattern(pattern)
    return _GEOMETRY[pattern][0] if pattern in _GEOMETRY else 1


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """scores [..., U] -> bool [..., U], the `keep` best per row with the lower-index tie rule."""
    units = scores.shape[-1]
    si = scores.unsqueeze(-1)  # [..., U(i), 1]
    sj = scores.unsqueeze(-2)  # [..., 1, U(j)]
    lower = torch.ones(units, units, dtype=torch.bool, device=scores.device).tril(-1)  # j < i
    rank = (sj > si).sum(-1) + ((sj == si) & lower).sum(-1)
    return rank < keep


def nm_mask(x: torch.Tensor, pattern: str) -> torch.Tensor:
    """Boolean keep-mask of the same shape as ``x``, along the last dim."""
    check_pattern(pattern)
    if pattern == "dense":
        return torch.ones_like(x, dtype=torch.bool)
    channels, units, keep, per_unit = _GEOMETRY[pattern]
    k = x.shape[-1]
    if k % channels:
        raise ValueError(f"sharq: last dim {k} is not a multiple of the {pattern} group ({channels})")
    mag = x.float().abs().reshape(*x.shape[:-1], k // channels, units, per_unit)
    kept_units = _keep_top(mag.amax(-1), keep)
    return kept_units.unsqueeze(-1).expand(mag.shape).reshape(x.shape)
