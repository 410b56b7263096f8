// gemm_tile.cuh: the 16x64 weight tile as the SharQ GEMMs consume it (gemm.cu's stream and tile
// kernels and its dequantization kernel; gemm_wgmma.cu's tile decode): FP4 -> 16-bit decode,
// the four m16n8k16 MMAs of a tile, the x_hat fragment loads and the fixed-order strip epilogue. The
// tiled layout and the k-permutation are explained in gemm.cu's header
// (sharq_vllm/kernels/layout.py builds the layout). One definition, so every kernel sums a tile
// in the same order and all of them give the same bits.
#pragma once

#include "sharq_common.cuh"

namespace sharq {
namespace tile {

constexpr int kWarps = 8;

template <typename T> struct MmaT;
// Code pair p (0..3) of a tiled word -> bf16x2 bits {c_2p, c_2p+1} * 2^-126 (exact; subnormals
// included): the bit placement of sharq_vllm/kernels/layout.py (BIT_POS, PAIR_DECODE) puts each
// code bit on its bf16 bit (sign 15, e1 e0 m0 at 8..6; +16 for the high half) after one left
// rotation, 2 instructions a pair (3 for p = 0). p is a compile-time constant after unrolling.
__device__ __forceinline__ uint32_t rotl(uint32_t w, int r) { return __funnelshift_l(w, w, r); }
__device__ __forceinline__ uint32_t decode_bf16(uint32_t w, int p) {
  switch (p) {
    case 0: return (w & 0x80C080C0u) | (rotl(w, 8) & 0x01000100u);
    case 1: return rotl(w, 14) & 0x81C081C0u;
    case 2: return rotl(w, 4) & 0x81C081C0u;
    default: return rotl(w, 10) & 0x81C081C0u;
  }
}
// MmaT<T>::pair: a code pair in T (from_bf16 maps the bf16 decode to T).
template <> struct MmaT<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t from_bf16(uint32_t b) { return b; }
  static __device__ __forceinline__ uint32_t pair(uint32_t w, int p) { return decode_bf16(w, p); }
  // (s_g, s_g8) e4m3 pair -> bf16x2 {s_g, s_g} and {s_g8, s_g8}, each * 2^119
  static __device__ __forceinline__ void scales(uint32_t s16, uint32_t& sg, uint32_t& sg8) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(s16 & 0xFFFFu), __NV_E4M3);
    const float f0 = __fmul_rn(__half2float(__half(__half_raw{h.x})), 6.646139978924579e35f);  // 2^119
    const float f1 = __fmul_rn(__half2float(__half(__half_raw{h.y})), 6.646139978924579e35f);
    __nv_bfloat162 a = __floats2bfloat162_rn(f0, f0);
    __nv_bfloat162 b = __floats2bfloat162_rn(f1, f1);
    sg = *reinterpret_cast<uint32_t*>(&a);
    sg8 = *reinterpret_cast<uint32_t*>(&b);
  }
  static __device__ __forceinline__ uint32_t two7() { return 0x43004300u; }  // bf16x2 {128, 128}
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
  // fp16: the bf16 bits with e1 e0 m0 moved from bits 8..6 to 11..9: e2m1 * 2^-14 (exact)
  static __device__ __forceinline__ uint32_t from_bf16(uint32_t b) {
    return (b & 0x80008000u) | ((b << 3) & 0x0E000E00u);
  }
  static __device__ __forceinline__ uint32_t pair(uint32_t w, int p) { return from_bf16(decode_bf16(w, p)); }
  static __device__ __forceinline__ void scales(uint32_t s16, uint32_t& sg, uint32_t& sg8) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(s16 & 0xFFFFu), __NV_E4M3);
    __half2 v = __hmul2(__half2(h), __float2half2_rn(128.0f));  // <= 448 * 128, exact
    __half2 a = __low2half2(v), b = __high2half2(v);
    sg = *reinterpret_cast<uint32_t*>(&a);
    sg8 = *reinterpret_cast<uint32_t*>(&b);
  }
  static __device__ __forceinline__ uint32_t two7() { return 0x58005800u; }  // f16x2 {128, 128}
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

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// x_hat fragments of tile t for the MT 8-row groups (two 16-byte loads a group; rows >= M read 0)
template <typename T, int MT>
__device__ __forceinline__ void load_x(uint4 (&xv)[MT][2], const T* const (&xrow)[MT], const bool (&mrow)[MT], int t) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (mrow[mt]) {
      const uint4* xp = reinterpret_cast<const uint4*>(xrow[mt] + 64 * t);
      xv[mt][0] = __ldg(xp);
      xv[mt][1] = __ldg(xp + 1);
    } else {
      xv[mt][0] = make_uint4(0, 0, 0, 0);
      xv[mt][1] = make_uint4(0, 0, 0, 0);
    }
  }
}

// Lane (g, q)'s x_hat row pointers: row m_base + 8 mt + g, its 16 values of a tile at 16 q.
template <typename T, int MT>
__device__ __forceinline__ void x_rows(const T* (&xrow)[MT], bool (&mrow)[MT], const T* x, int64_t xs, int m_base,
                                       int M, int g, int q) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = m_base + 8 * mt + g;
    mrow[mt] = m < M;
    xrow[mt] = x + (int64_t)(mrow[mt] ? m : 0) * xs + 16 * q;
  }
}

// k16 step j's A fragment (m16n8k16's registers a0..a3: rows g / g+8 at the step's logical k
// {2q, 2q+1} / {2q+8, 2q+9}) from the lane's four code words w and its row scales sg / sg8
// (MmaT<T>::scales): words (w0,w1) for j < 2, (w2,w3) for j >= 2; code pairs 2(j&1) (a0a1),
// 2(j&1)+1 (a2a3). The same registers are, per warp of a warpgroup, wgmma's register A operand
// (gemm_wgmma_rs.cu).
template <typename T>
__device__ __forceinline__ void a_step(uint32_t (&a)[4], const uint32_t (&w)[4], int j, uint32_t sg, uint32_t sg8) {
  const uint32_t lo = w[(j >> 1) * 2 + 0], hi = w[(j >> 1) * 2 + 1];
  const int p = 2 * (j & 1);
  a[0] = MmaT<T>::mul(MmaT<T>::pair(lo, p), sg);
  a[1] = MmaT<T>::mul(MmaT<T>::pair(hi, p), sg8);
  a[2] = MmaT<T>::mul(MmaT<T>::pair(lo, p + 1), sg);
  a[3] = MmaT<T>::mul(MmaT<T>::pair(hi, p + 1), sg8);
}

// One tile into acc: the lane's 16 code bytes qv, its scale pair s16 (E4M3 of rows g, g+8),
// x fragments xv. Four k16 steps, each one dequantized A fragment shared by the MT MMAs.
template <typename T, int MT>
__device__ __forceinline__ void mma_tile(float (&acc)[MT][4], const uint4& qv, uint32_t s16,
                                         const uint4 (&xv)[MT][2]) {
  uint32_t sg, sg8;
  MmaT<T>::scales(s16, sg, sg8);
  const uint32_t w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t a[4];
    a_step<T>(a, w, j, sg, sg8);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const uint32_t* xw = reinterpret_cast<const uint32_t*>(&xv[mt][0]);  // 8 words
      MmaT<T>::mma(acc[mt], a, xw[2 * j], xw[2 * j + 1]);
    }
  }
}

// Strip epilogue, after the kWarps warps wrote their accumulators to red (and a barrier):
// threads tid, tid + nthreads, ... sum the warps' partials in warp order (fixed: deterministic),
// scale by tensor_scale * 2^7, add the bias, round once and store rows < M, columns < n_valid.
template <typename T, int MT>
__device__ __forceinline__ void store_strip(const float (&red)[kWarps][MT][4][32], int strip, int m_base, int M,
                                            int n_valid, float ts, const T* bias, T* y, int64_t ys, int tid,
                                            int nthreads) {
  for (int idx = tid; idx < MT * 4 * 32; idx += nthreads) {
    const int mt = idx >> 7, c = (idx >> 5) & 3, ln = idx & 31;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][mt][c][ln];
    const int n = strip * 16 + (ln >> 2) + (c >= 2 ? 8 : 0);
    const int m = m_base + 8 * mt + 2 * (ln & 3) + (c & 1);
    if (m < M && n < n_valid) {
      float v = __fmul_rn(sum, ts);
      if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[n]));
      y[(int64_t)m * ys + n] = Elem<T>::from_float(v);
    }
  }
}

}  // namespace tile
}  // namespace sharq
