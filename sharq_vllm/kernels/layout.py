"""The Hopper kernels' weight layout ("tiled"), built once per layer at load time.

The checkpoint / reference payload is canonical (codes uint8 [N, K/2], E4M3 scales [N, K/block]);
the CUDA GEMMs read a tiled copy in which every lane's bytes are exactly the operands it feeds
to the tensor cores, so one 16-byte load gives a lane a whole 16 x 64 tile's share and no byte
is rearranged at run time. Contract (mirrored in csrc/fp4_tile.cuh):

* tile (s, t) = rows 16s..16s+15, k 64t..64t+63; N is padded to a multiple of 16 with zero rows.
* qweight: uint8 [N/16, K/64, 32 lanes, 16 bytes] (a strip's tiles are contiguous). Lane
  L = 4g + q holds 4 words; word j (k16 step j) holds, in this order, the pairs
  (row g, k 16j+2q, +1), (row g+8, k 16j+2q, +1), (row g, k 16j+2q+8, +9), (row g+8, k 16j+2q+8, +9)
  - the mma.sync m16n8k16 / wgmma A fragment registers a0..a3 of step j, in natural k order.
  Inside a word, code c_i (i = 0..7, pairs in order) sits at nibble position NIBBLE_POS[i], so
  that (word << 4i) carries pair i in the top nibbles of its two 16-bit halves.
* scales: uint8 [N/16, K/64, 64 (16-blocks) | 32 (32-blocks)]: byte 8g + 2b + h (16-blocks; b =
  block of the tile) or 4g + 2b + h (32-blocks) is the SCALE CODE of row 16s + g + 8h, block b.
  A scale code is the E4M3 scale re-encoded so that a 16-bit float of it is one integer
  multiply-add: scale * 2^118 in bf16 = code * 16 + 0x7600, scale * 2^6 in fp16 = code * 128 +
  0x3000 (code = (E + 9) << 3 | mantissa for scale = 2^E (1 + mantissa / 8); E4M3 subnormals are
  normalised; zero -> 0, whose block holds zero codes only). With the E2M1 value decoded as
  value * 2^-126 (bf16) / 2^-14 (fp16), every weight becomes value * scale * 2^-8, exactly.
"""

from __future__ import annotations

import torch

from ..fp4 import unpack_nibbles

TILE_K = 64
TILE_ROWS = 16
NIBBLE_POS = (3, 7, 2, 6, 1, 5, 0, 4)  # nibble position of code c0..c7 inside a word
DEQUANT_EXPONENT = -8  # kernel weights are value * scale * 2^-8: the epilogue multiplies by 2^8


def _code_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 byte -> scale code, and scale code -> E4M3 byte (256 entries each)."""
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    to_code = torch.zeros(256, dtype=torch.int32)
    to_e4m3 = torch.zeros(256, dtype=torch.int32)
    for byte in range(256):
        v = float(e4m3[byte])
        if byte & 0x80 or v != v or v == 0.0:  # negative, NaN: never a weight scale; zero: 0
            continue
        mant, exp = torch.frexp(torch.tensor(v, dtype=torch.float64))  # v = mant * 2^exp, [0.5, 1)
        e = int(exp) - 1
        m = round((float(mant) * 2 - 1) * 8)
        assert 0 <= m < 8 and (1 + m / 8) * 2.0**e == v, (byte, v)
        code = ((e + 9) << 3) | m
        assert 0 <= code < 256
        to_code[byte] = code
        to_e4m3[code] = byte
    return to_code, to_e4m3


SCALE_TO_CODE, CODE_TO_SCALE = _code_tables()


def _scale_index(block: int) -> tuple[int, int]:
    if block not in (16, 32):
        raise ValueError(f"sharq: tiled layout needs weight block 16 or 32, got {block}")
    return 64 // block, 8 if block == 16 else 4  # blocks a tile, bytes a row pair


def tile_weight(
    codes: torch.Tensor, scales: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Canonical (codes uint8 [N, K/2], E4M3 scales [N, K/block]) -> (qweight uint8
    [N_pad/16, K/64 * 512], scale codes uint8 [N_pad/16, K/64 * 64], N_pad)."""
    n, k2 = codes.shape
    k = 2 * k2
    if k % TILE_K:
        raise ValueError(f"sharq: tiled layout needs K % {TILE_K} == 0, got K={k}")
    nb, per_g = _scale_index(block)
    n_pad = (n + 15) // 16 * 16
    kt, s_count = k // TILE_K, n_pad // 16
    c = unpack_nibbles(codes).to(torch.int64)
    sb = scales.view(torch.uint8) if scales.dtype != torch.uint8 else scales
    if n_pad != n:
        c = torch.cat([c, c.new_zeros(n_pad - n, k)])
        sb = torch.cat([sb, sb.new_zeros(n_pad - n, sb.shape[1])])
    # row 16S + 8h + g, k = 64 KT + 16 j + 8 r + 2 q + e  ->  [S, KT, g, q, j, (r, h), e]
    c = c.reshape(s_count, 2, 8, kt, 4, 2, 4, 2)  # [S, h, g, KT, j, r, q, e]
    c = c.permute(0, 3, 2, 6, 4, 5, 1, 7)  # [S, KT, g, q, j, r, h, e]
    c = c.reshape(s_count, kt, 8, 4, 4, 8)  # pair i = 2 r + h, code index 2 i + e
    shifts = torch.tensor([4 * p for p in NIBBLE_POS], dtype=torch.int64, device=c.device)
    words = (c << shifts).sum(-1)  # [S, KT, g, q, j] uint32 values
    byte_shift = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=c.device)
    qweight = ((words.unsqueeze(-1) >> byte_shift) & 0xFF).to(torch.uint8)
    code = SCALE_TO_CODE.to(sb.device)[sb.long()].to(torch.uint8)  # [N_pad, K/block]
    code = code.reshape(s_count, 2, 8, kt, nb).permute(0, 3, 2, 4, 1)  # [S, KT, g, b, h]
    sc = code.reshape(s_count, kt * 8 * per_g).contiguous()
    return qweight.reshape(s_count, kt * 512), sc, n_pad


def untile_weight(
    qweight: torch.Tensor, scales: torch.Tensor, n: int, k: int, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`tile_weight`: (codes uint8 [N, K/2], E4M3 scale bytes uint8 [N, K/block])."""
    nb, _ = _scale_index(block)
    s_count = qweight.shape[0]
    kt = k // TILE_K
    b = qweight.reshape(s_count, kt, 8, 4, 4, 4).to(torch.int64)  # [S, KT, g, q, j, byte]
    words = (b << torch.tensor([0, 8, 16, 24], device=b.device)).sum(-1)
    shifts = torch.tensor([4 * p for p in NIBBLE_POS], dtype=torch.int64, device=b.device)
    c = (words.unsqueeze(-1) >> shifts) & 0xF  # [S, KT, g, q, j, 8]
    c = c.reshape(s_count, kt, 8, 4, 4, 2, 2, 2)  # [S, KT, g, q, j, r, h, e]
    c = c.permute(0, 6, 2, 1, 4, 5, 3, 7).reshape(s_count * 16, k)[:n].to(torch.uint8)
    packed = (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()
    sc = scales.reshape(s_count, kt, 8, nb, 2)
    sc = sc.permute(0, 4, 2, 1, 3).reshape(s_count * 16, kt * nb)[:n]
    e4m3 = CODE_TO_SCALE.to(sc.device)[sc.long()].to(torch.uint8)
    return packed, e4m3.contiguous()
