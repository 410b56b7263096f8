"""The Hopper kernels' weight layout ("tiled"), built once per layer at load time.

The checkpoint / reference payload is canonical (codes uint8 [N, K/2], E4M3 scales [N, K/block]);
the CUDA GEMMs read a tiled copy in which each lane's bytes are the operands it feeds to the
tensor cores, so one 16-byte load gives a lane its share of a 16 x 64 tile. Contract (mirrored in
the header of sharq_vllm/csrc/gemm.cu, which also explains the k-permutation the MMAs use):

* tile (s, t) = rows 16s..16s+15, k 64t..64t+63; N is padded to a multiple of 16 with zero rows.
* qweight: int32 [N/16, K/64 * 128] = [N/16][K/64][32 lanes][4 words]: lane L = 4g + q holds
  w0 = row 16s+g, k 64t+16q+0..7;  w1 = row 16s+g+8, same k;  w2 = row 16s+g, k 64t+16q+8..15;
  w3 = row 16s+g+8, same k. A word's codes c0..c7 (k order) sit at nibble positions
  :data:`NIBBLE_POS`, so that (word << 4j) carries (c_2j, c_2j+1) in the top nibbles of its two
  16-bit halves (one and/shift/or makes a bf16x2 / fp16x2 pair).
* scales: uint8 [N/16, K/64 * 16 * (64/block)]: byte (b * 16 + 2g + h) of a tile is the E4M3
  scale of row 16s+g+8h, block b of the tile (a lane reads the u16 (s_g, s_g+8) of its block).

Why this layout (and not one in natural k order): a lane's 16 k of a tile lie in one scale block,
so it converts one scale pair a tile, and reads its 16 x_hat values with two 16-byte loads - the
decode (M <= 16) kernel is instruction-bound, and a natural-order layout measured 25-40% slower
there on an H200 (docs/KERNELS.md, "a kernel set that was measured and not made the default").
"""

from __future__ import annotations

import torch

from ..fp4 import unpack_nibbles

TILE_K = 64
TILE_ROWS = 16
NIBBLE_POS = (3, 7, 2, 6, 1, 5, 0, 4)  # nibble position of code c0..c7 inside a tiled word


def _check(k: int, block: int) -> None:
    if k % TILE_K:
        raise ValueError(f"sharq: tiled layout needs K % {TILE_K} == 0, got K={k}")
    if block not in (16, 32):
        raise ValueError(f"sharq: tiled layout needs weight block 16 or 32, got {block}")


def tile_weight(
    codes: torch.Tensor, scales: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Canonical (codes uint8 [N, K/2], scales E4M3/uint8 [N, K/block]) -> (qweight int32
    [N_pad/16, K/64*128], scales uint8 [N_pad/16, K/64*16*(64/block)], N_pad)."""
    n, k2 = codes.shape
    k = 2 * k2
    _check(k, block)
    n_pad = (n + 15) // 16 * 16
    kt = k // TILE_K
    s_count = n_pad // 16
    c = unpack_nibbles(codes).to(torch.int64)
    sc = scales.view(torch.uint8) if scales.dtype != torch.uint8 else scales
    if n_pad != n:
        c = torch.cat([c, c.new_zeros(n_pad - n, k)])
        sc = torch.cat([sc, sc.new_zeros(n_pad - n, sc.shape[1])])
    # [S, h, g, KT, q, half, i]: row 16S + 8h + g, k = 64 KT + 16 q + 8 half + i
    c = c.reshape(s_count, 2, 8, kt, 4, 2, 8)
    shifts = torch.tensor([4 * p for p in NIBBLE_POS], dtype=torch.int64, device=c.device)
    words = (c << shifts).sum(-1)  # [S, h, g, KT, q, half], < 2^32
    words = words.permute(0, 3, 2, 4, 5, 1).contiguous()  # [S, KT, g, q, half, h]
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    qweight = words.reshape(s_count, kt * 128)
    nb = 64 // block
    scl = sc.reshape(s_count, 2, 8, kt, nb).permute(0, 3, 4, 2, 1).contiguous()  # [S, KT, nb, g, h]
    return qweight, scl.reshape(s_count, kt * nb * 16), n_pad


def untile_weight(
    qweight: torch.Tensor, scales: torch.Tensor, n: int, k: int, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`tile_weight`: (codes uint8 [N, K/2], E4M3 scale bytes uint8 [N, K/block])."""
    _check(k, block)
    n_pad = qweight.shape[0] * 16
    kt = k // TILE_K
    s_count = n_pad // 16
    words = qweight.reshape(s_count, kt, 8, 4, 2, 2).to(torch.int64) & 0xFFFFFFFF  # [S,KT,g,q,half,h]
    words = words.permute(0, 5, 2, 1, 3, 4)  # [S, h, g, KT, q, half]
    shifts = torch.tensor([4 * p for p in NIBBLE_POS], dtype=torch.int64, device=words.device)
    c = (words.unsqueeze(-1) >> shifts) & 0xF  # [S, h, g, KT, q, half, i]
    c = c.reshape(n_pad, k).to(torch.uint8)[:n]
    packed = (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()
    nb = 64 // block
    scl = scales.reshape(s_count, kt, nb, 8, 2).permute(0, 4, 3, 1, 2).reshape(n_pad, kt * nb)[:n]
    return packed, scl.contiguous()
