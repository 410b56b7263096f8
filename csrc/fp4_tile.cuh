// fp4_tile.cuh: the prepacked ("tiled") SharQ weight layout and its in-register FP4 -> 16-bit
// decode, shared by the GEMM kernels (gemm_decode.cu, gemm_wgmma.cu). torch-free.
//
// Layout (built once per layer by sharq_vllm.kernels.layout.tile_weight; N padded to 16 with zero
// rows; K % 64 == 0):
//   tile (s, t) = rows 16s..16s+15, k 64t..64t+63.  qweight: [N/16][K/64][32 lanes][16 bytes], so
//   a strip's tiles are one contiguous byte range. Lane L = 4g + q (g = L/4, q = L%4) holds 4
//   words; word j (the k16 step j of the tile) holds the pairs
//     0: (row g,   k 16j+2q, +1)    1: (row g+8, k 16j+2q, +1)
//     2: (row g,   k 16j+2q+8, +9)  3: (row g+8, k 16j+2q+8, +9)
//   i.e. the A-fragment registers a0..a3 of mma.sync m16n8k16 - and of wgmma's register A
//   operand, whose per-warp layout is the same - in NATURAL k order (x_hat needs no reordering).
//   Code c_i (pair i = codes 2i, 2i+1) sits at nibble position 3,7,2,6,1,5,0,4 (i = 0..7), so
//   (word << 4i) has pair i in the top nibbles of its two 16-bit halves.
//   scales: [N/16][K/64][64 | 32 bytes]: byte 8g + 2b + h (16-blocks) or 4g + 2b + h (32-blocks)
//   is the SCALE CODE of row 16s+g+8h, block b: one u64 (u32) load gives a lane all it needs.
//   Scale code (see layout.py): scale * 2^118 as bf16 = code * 16 + 0x7600, scale * 2^6 as fp16 =
//   code * 128 + 0x3000: one byte permute + one integer multiply-add give a {s, s} pair.
// Decode of a pair: nibble -> bf16 bits (sign to bit 15, magnitude to bits 8..6) = e2m1 * 2^-126,
// fp16 (magnitude to bits 11..9) = e2m1 * 2^-14 (subnormals included); times the scale pair:
// e2m1 * scale * 2^-8 in both types, EXACT (<= 6 significant bits, within range). The epilogue
// multiplies the FP32 accumulator by tensor_scale * 2^8 and adds the bias, rounding once.
#pragma once

#include "sharq_common.cuh"

namespace sharq {

constexpr int kTileBytes = 512;                 // codes of one 16 x 64 tile
constexpr float kDequantRescale = 256.0f;       // 2^8: undoes the decode's 2^-8
__host__ __device__ constexpr int tile_scale_bytes(int wblock) { return wblock == 32 ? 32 : 64; }

template <typename T> struct MmaT;
template <> struct MmaT<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t extract(uint32_t t) {
    return (t & 0x80008000u) | ((t >> 6) & 0x01C001C0u);
  }
  // {code, 0, code, 0} bytes -> bf16x2 {scale, scale} * 2^118
  static __device__ __forceinline__ uint32_t scale2(uint32_t dup) { return dup * 16u + 0x76007600u; }
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct MmaT<__half> {
  static __device__ __forceinline__ uint32_t extract(uint32_t t) {
    return (t & 0x80008000u) | ((t >> 3) & 0x0E000E00u);
  }
  static __device__ __forceinline__ uint32_t scale2(uint32_t dup) { return dup * 128u + 0x30003000u; }
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// A lane's scale codes of one tile: u64 (16-blocks: bytes 2b + h) or u32 (32-blocks).
struct TileScales {
  uint32_t lo, hi;  // bytes 0..3, 4..7 (hi unused with 32-blocks)
};
__device__ __forceinline__ TileScales load_tile_scales(const uint8_t* tile_scales, int wblock, int g) {
  TileScales s;
  if (wblock == 16) {
    const uint2 v = *reinterpret_cast<const uint2*>(tile_scales + 8 * g);
    s.lo = v.x;
    s.hi = v.y;
  } else {
    s.lo = *reinterpret_cast<const uint32_t*>(tile_scales + 4 * g);
    s.hi = 0;
  }
  return s;
}

// {scale, scale} pairs of rows g (sg) and g+8 (sg8) for k16 step j.
template <typename T>
__device__ __forceinline__ void step_scales(const TileScales& s, int wblock, int j, uint32_t& sg, uint32_t& sg8) {
  const int b = wblock == 16 ? j : (j >> 1);    // block of step j
  const uint32_t w = b < 2 ? s.lo : s.hi;
  const uint32_t byte_g = (uint32_t)(2 * (b & 1));  // byte index of row g's code in w
  // prmt selectors: {byte, zero, byte, zero} (selector 4 = byte 0 of the zero operand)
  sg = MmaT<T>::scale2(prmt(w, 0u, 0x4040u | (byte_g << 8) | byte_g));
  sg8 = MmaT<T>::scale2(prmt(w, 0u, 0x4040u | ((byte_g + 1) << 8) | (byte_g + 1)));
}

// A fragment of k16 step j from the lane's word j and the step's scale pairs.
template <typename T>
__device__ __forceinline__ void a_fragment(uint32_t word, uint32_t sg, uint32_t sg8, uint32_t (&a)[4]) {
  a[0] = MmaT<T>::mul(MmaT<T>::extract(word), sg);
  a[1] = MmaT<T>::mul(MmaT<T>::extract(word << 4), sg8);
  a[2] = MmaT<T>::mul(MmaT<T>::extract(word << 8), sg);
  a[3] = MmaT<T>::mul(MmaT<T>::extract(word << 12), sg8);
}

}  // namespace sharq
