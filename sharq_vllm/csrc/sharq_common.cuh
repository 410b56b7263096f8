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
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
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
