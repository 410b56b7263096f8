"""The Hopper kernels' weight layout ("tiled"), built once per layer at load time.

The checkpoint / reference payload is canonical (codes uint8 [N, K/2], E4M3 scales [N, K/block]);
the CUDA GEMMs read a tiled copy in which each lane's bytes are the operands it feeds to the
tensor cores, so one 16-byte load gives a lane its share of a 16 x 64 tile. Contract (mirrored in
the header of sharq_vllm/csrc/gemm.cu, which also explains the k-permutation the MMAs use):

* tile (s, t) = rows 16s..16s+15, k 64t..64t+63; N is padded to a multiple of 16 with zero rows.
* qweight: int32 [N/16, K/64 * 128] = [N/16][K/64][32 lanes][4 words]: lane L = 4g + q holds
  w0 = row 16s+g, k 64t+16q+0..7;  w1 = row 16s+g+8, same k;  w2 = row 16s+g, k 64t+16q+8..15;
  w3 = row 16s+g+8, same k. A word's 8 codes c0..c7 (k order) form 4 pairs p = (c_2p, c_2p+1),
  and a pair decodes to a bf16x2 (low half c_2p, high half c_2p+1; value e2m1 * 2^-126) in 2-3
  integer instructions (:data:`PAIR_DECODE`): code bit b (m0, e0, e1, sign) of half h sits at bit
  (:data:`BF16_TARGET`[b] + 16 h - :data:`PAIR_ROT`[p][b]) mod 32 of the word (:data:`BIT_POS`),
  so rotating the word left by PAIR_ROT[p][b] puts it on its bf16 bit. Three pairs need one
  rotation and one mask; the fourth keeps three bits in place and rotates one (no placement of 8
  codes lets all four pairs use one rotation: the translates of {6, 7, 8, 15} do not tile Z16).
* scales: uint8 [N/16, K/64 * 16 * (64/block)]: byte (b * 16 + 2g + h) of a tile is the E4M3
  scale of row 16s+g+8h, block b of the tile (a lane reads the u16 (s_g, s_g+8) of its block).

x_hat in fragment order (what the stream GEMM reads at the row counts
``dispatch.xhat_fragment_rows`` names, when the caller asks for it): rows [M, K] with M a multiple of 8,
stored as [M/8 row groups][K/64 tiles][2 halves][8 rows g][4 lanes q][8 values]: element (G, t, h,
g, q, i) is x_hat[8G + g, 64t + 16q + 8h + i], the 8 values lane 4g + q feeds to the MMAs of tile t
(one 16-byte load each half). A warp's load of one half is then 512 contiguous bytes (4 L1
wavefronts) instead of 64 bytes from each of 8 rows (8 wavefronts; docs/KERNELS.md has the ncu
counts). Same shape and size as the row-major tensor; only the order of its elements differs.

Why this layout (and not one in natural k order): a lane's 16 k of a tile lie in one scale block,
so it converts one scale pair a tile, and reads its 16 x_hat values with two 16-byte loads - the
decode (M <= 16) kernel is instruction-bound, and a natural-order layout measured 25-40% slower
there on an H200 (docs/KERNELS-HISTORY.md, "a kernel set that was measured and not made the default").
"""

from __future__ import annotations

import torch

from ..fp4 import unpack_nibbles

TILE_K = 64
TILE_ROWS = 16
#: bf16 bit of each E2M1 code bit (m0, e0, e1, sign): e1 e0 m0 as the low exponent bits and the
#: top mantissa bit give e2m1 * 2^-126 exactly (subnormals included)
BF16_TARGET = (6, 7, 8, 15)
#: left rotation of the word that brings code bit b of pair p onto its bf16 bit
PAIR_ROT = ((0, 0, 8, 0), (14, 14, 14, 14), (4, 4, 4, 4), (10, 10, 10, 10))
#: the decode of pair p, as sharq_vllm/csrc/gemm_tile.cuh (decode_bf16) writes it
PAIR_DECODE = (
    "(w & 0x80C080C0) | (rotl(w, 8) & 0x01000100)",
    "rotl(w, 14) & 0x81C081C0",
    "rotl(w, 4) & 0x81C081C0",
    "rotl(w, 10) & 0x81C081C0",
)
#: BIT_POS[i][b]: the word bit holding bit b of code c_i (i = 2p + h)
BIT_POS = tuple(
    tuple((BF16_TARGET[b] + 16 * (i % 2) - PAIR_ROT[i // 2][b]) % 32 for b in range(4)) for i in range(8)
)
assert sorted(p for code in BIT_POS for p in code) == list(range(32)), "a word holds 8 codes exactly"


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
    c = unpack_nibbles(codes)  # uint8: one byte a weight while packing (load time, on the GPU)
    sc = scales.view(torch.uint8) if scales.dtype != torch.uint8 else scales
    if n_pad != n:
        c = torch.cat([c, c.new_zeros(n_pad - n, k)])
        sc = torch.cat([sc, sc.new_zeros(n_pad - n, sc.shape[1])])
    # [S, h, g, KT, q, half, i]: row 16S + 8h + g, k = 64 KT + 16 q + 8 half + i
    c = c.reshape(s_count, 2, 8, kt, 4, 2, 8)
    # one code bit at a time: the int64 temporaries are 1/8 of the weights each
    words = torch.zeros(c.shape[:-1], dtype=torch.int64, device=c.device)  # [S, h, g, KT, q, half]
    for i in range(8):
        ci = c[..., i].to(torch.int64)
        for b in range(4):
            words |= ((ci >> b) & 1) << BIT_POS[i][b]
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
    c = torch.empty((*words.shape, 8), dtype=torch.uint8, device=words.device)  # [S, h, g, KT, q, half, i]
    for i in range(8):
        ci = torch.zeros(words.shape, dtype=torch.int64, device=words.device)
        for b in range(4):
            ci |= ((words >> BIT_POS[i][b]) & 1) << b
        c[..., i] = ci.to(torch.uint8)
    c = c.reshape(n_pad, k)[:n]
    packed = (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()
    nb = 64 // block
    scl = scales.reshape(s_count, kt, nb, 8, 2).permute(0, 4, 3, 1, 2).reshape(n_pad, kt * nb)[:n]
    return packed, scl.contiguous()


def _fragment_view(m: int, k: int) -> tuple[int, ...]:
    if m % 8 or k % TILE_K:
        raise ValueError(f"sharq: x_hat fragment order needs M % 8 == 0 and K % {TILE_K} == 0, got [{m}, {k}]")
    return (m // 8, 8, k // TILE_K, 4, 2, 8)  # [G, g, t, q, h, i]


def xhat_to_fragments(x_hat: torch.Tensor) -> torch.Tensor:
    """Row-major x_hat [M, K] -> the same values in fragment order (module docstring), [M, K]."""
    m, k = x_hat.shape
    return x_hat.reshape(_fragment_view(m, k)).permute(0, 2, 4, 1, 3, 5).reshape(m, k).contiguous()


def xhat_from_fragments(x_frag: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`xhat_to_fragments`."""
    m, k = x_frag.shape
    g_, g, t, q, h, i = _fragment_view(m, k)
    return x_frag.reshape(g_, t, h, g, q, i).permute(0, 3, 1, 4, 2, 5).reshape(m, k).contiguous()
