// sharq_common.cuh: device helpers shared by the SharQ kernels (torch-free; sm_90a).
//
// Every FP32 operation that the bit-level contract (docs/NUMERICS.md) fixes is written with an
// explicit round-to-nearest intrinsic (__fmul_rn, __fdiv_rn, __fadd_rn, __fsub_rn) so that nvcc
// cannot contract a multiply and an add into an FMA (one rounding instead of two) or replace a
// division by a reciprocal multiply: the preparation kernel must be bit-identical to
// sharq_vllm/reference.py, which computes each step in IEEE FP32 with separate roundings.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cstdint>

namespace sharq {

// ---- element types ----------------------------------------------------------------------
template <typename T> struct Elem;
// kInfBits: the bits of +Inf. With the sign bit cleared, a 16-bit float's bits order like its
// magnitude, and bits >= kInfBits are Inf or NaN (the preparation's row max works on bits).
template <> struct Elem<__nv_bfloat16> {
  static constexpr uint32_t kInfBits = 0x7F80u;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float bits_to_float(uint32_t b) {
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)b));
  }
};
template <> struct Elem<__half> {
  static constexpr uint32_t kInfBits = 0x7C00u;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float bits_to_float(uint32_t b) {
    return __half2float(__ushort_as_half((unsigned short)b));
  }
};
template <> struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

// ---- E2M1 -----------------------------------------------------------------------------------
// Encode v (already divided by its block scale) with the reference's thresholds: ties to the
// even code, saturate at 6, sign bit from signbit(v) (so a small negative gives code 8, "-0").
// NaN gives +0 (callers zero non-finite rows first, as the reference does).
__device__ __forceinline__ uint32_t e2m1_encode(float v) {
  float a = fabsf(v);
  uint32_t c = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
               (a >= 3.5f) + (a > 5.0f);
  uint32_t s = (__float_as_uint(v) >> 31) & (v == v ? 1u : 0u);
  return c | (s << 3);
}

__device__ __forceinline__ float e2m1_decode(uint32_t code) {
  // magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 without a table: for m = code & 7,
  // m < 2: m * 0.5;  else 2^((m>>1)-1) * (1 + (m&1)/2)
  uint32_t m = code & 7u;
  float mag = (m < 2u) ? 0.5f * (float)m
                       : __uint_as_float(((m >> 1) + 126u) << 23) * (1.0f + 0.5f * (float)(m & 1u));
  return (code & 8u) ? -mag : mag;
}

// v (finite: already times 1/d) rounded to the E2M1 grid, returned as that VALUE, i.e.
// e2m1_decode(e2m1_encode(v)) for every finite v, -0 for small negatives included, without the
// code (6 SASS instructions against ~45 for encode + decode; the preparation needs the values
// only). The grid's spacing s is 0.5 below 2, 1 in [2, 4) and 2 from 4; adding then subtracting
// c = 1.5 * 2^23 * s rounds v to a multiple of s with the FP32 adder's round-to-nearest-even
// (exact for |v| < 2^22 * s; c / s is even, so negatives round like positives). c's exponent is
// |v|'s binade + 22, at least the [1, 2) binade's (below 1 the spacing stays 0.5). Even
// multiples of s are the even codes, so ties go where e2m1_encode sends them (0.25 -> 0,
// 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4). |v| >= 8 (also where c
// overflows to a tiny negative number or NaN) gives 6 through fminf. NaN gives 6 where
// e2m1_encode gives +0: callers use encode + decode where v may be NaN (0 * an infinite 1/d).
// Checked against fp4.e2m1_encode / e2m1_decode by tests/ops/test_prep_math.py (a replay of
// these bit operations) and on the GPU through the preparation's bit-exact tests.
__device__ __forceinline__ float e2m1_round(float v) {
  const uint32_t u = __float_as_uint(v);
  const float c = __uint_as_float(max((u & 0x7F800000u) + (22u << 23) + 0x00400000u, 0x4AC00000u));
  const float r = fminf(fabsf(__fsub_rn(__fadd_rn(v, c), c)), 6.0f);
  return __uint_as_float(__float_as_uint(r) | (u & 0x80000000u));
}

// The code of a grid value (e2m1_round's result): magnitudes 0 and 0.5 are codes 0 and 1; from 1
// on, |q|'s bits >> 22 are 254, 255, 256, 257, 258, 259 for 1, 1.5, 2, 3, 4, 6 (codes 2..7).
__device__ __forceinline__ uint32_t e2m1_code_of(float q) {
  const uint32_t u = __float_as_uint(q), a = u & 0x7FFFFFFFu;
  const uint32_t m = a >= 0x3F800000u ? (a >> 22) - 252u : (a != 0u ? 1u : 0u);
  return m | ((u >> 28) & 8u);
}

// ---- E4M3 (float8_e4m3fn) -------------------------------------------------------------------
// Non-negative (or NaN) FP32 -> E4M3 bits: saturate to 448, round to nearest even, subnormals to
// 2^-9; NaN -> 0x7F. This is torch's clamp(max=448).to(float8_e4m3fn) for non-negative inputs.
__device__ __forceinline__ uint32_t e4m3_encode(float v) {
  return (uint32_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ float e4m3_decode(uint32_t bits) {
  __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)bits, __NV_E4M3);
  return __half2float(__half(h));
}

}  // namespace sharq
