// prep.cu: SharQ fused activation preparation (one pass over each activation row).
//
// Contract (docs/NUMERICS.md, sharq_vllm/reference.py::prepare_activation, bit-exact):
//   x [M, K] (bf16 | fp16 | fp32, row stride x_stride elements)  ->  x_hat [M, K] same dtype,
//   x_hat = deQ(Q(mask(x) * x)) + deQ(Q(x - deQ(Q(mask(x) * x))))   (FP32, rounded once).
//   fmt kNVFP4 (E4M3 block scales, per-row FP32 tensor scale amax/2688), kMXFP4 (E8M0 scales);
//   pattern kDense, kTwoOfFour, kFourOfEightPairs (sharq_kernels.h). The block sizes are values
//   from the caller (sharq_vllm/reference.py defines them: backbone block = 2x the format's block
//   unless dense, residual block = the format's; NVFP4 32 (16) / 16, MXFP4 64 (32) / 32).
//   Rows holding NaN/Inf give NaN rows.
//   The row may be produced in the same kernel (kProd; contract sharq_vllm/producers.py):
//   vLLM's RMSNorm with the residual add (launch_prep_norm: x_hat = prepare(rms_norm(x + r)),
//   residual_out = x + r) or SiLU * mul of the row's two halves (launch_prep_silu_mul).
//   Optional debug outputs (any may be null): mask u8 [M,K], backbone/residual codes packed u8
//   [M,K/2] (low nibble first), their scale bytes u8 [M,K/block], tensor scales f32 [M,2].
//
// Tiling: each thread owns V chunks of 8 consecutive channels (one 16-byte load for bf16/fp16),
// chunk c = v*blockDim + tid, so a warp reads 512 contiguous bytes per load. 8 channels hold one
// 4:8 group or two 2:4 groups, so the mask is thread-local; a 16/32/64 channel scale block spans
// 2/4/8 consecutive lanes (shuffle-xor reduction). The row stays in registers between the
// passes (x read once, x_hat written once: 4 bytes of traffic per bf16 element). Two row
// reductions: (amax of x | non-finite flag) folded into one max (a non-finite row reduces to
// +Inf), and the amax of the residual.
// The passes work on values, not codes: e2m1_round (sharq_common.cuh) gives each element's
// E2M1 grid value with one FP32 add and subtract (6 instructions against ~45 for the threshold
// encode + decode), the backbone's grid values wait for pass 2 as bf16x2 words, the row max of
// pass 1 is a 16-bit integer max on the raw bits, and the 4:8 / 2:4 selection takes six
// comparisons a group. Codes are formed only by the debug kernel (kDebug), from the grid
// values. H200, NVFP4 4:8-pairs, bf16 (benchmarks/results/kernels-H200-prep-rewrite.json: ncu and
// the A/B against the old kernel; kernels-H200.json: prep_configs_us):
// ~62 instructions an element (ncu), 16384 x 14336 in 739 us (1.27 TB/s, was 1561 us).
// Configurations (launch_prep_t; all give identical bits, tests/gpu/test_prep_gpu.py):
//   M <= 64 (decode, M < #SMs): rows longer than 8192 are split over a thread-block CLUSTER of
//     up to 8 CTAs (8 SMs; prep_cluster_size, with its own rule when SiLU * mul is in front);
//     each CTA pushes its two row maxima into every peer's shared memory (st.async onto the
//     peer's mbarrier: no cluster barrier, no GPU-scope fence; ClusterMax, row_max).
//   64 < M <= 256: one CTA a row, V = 1 (K <= 8192), 2 (K <= 16384), 8.
//   M > 256: V = 2 (2 independent chunks a thread) up to K = 8192; V = 4 on CTAs of at most 448
//     threads, two an SM, for K = 8200..14336 (-17% at 1024 x 14336); V = 2 up to K = 16384, V = 8
//     above. The RMSNorm variants (K <= 8192) V = 2 on a CTA of half the padded chunk count
//     (launch_norm; -18% at 4096 x 4096).
// Block encoding (NUMERICS.md): one correctly rounded FP32 reciprocal per block (__frcp_rn),
// one __fmul_rn per value, then rounding to the E2M1 grid; no per-element division.
// Programmatic dependent launch on both sides: the kernel is launched with the attribute and
// waits (griddepcontrol.wait) for the kernel before it before touching memory, then triggers its
// own dependents, so the stream or wgmma GEMM that follows can issue its weight loads while this
// kernel runs (it waits before reading x_hat).
#include "sharq_common.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"

namespace sharq {
namespace {

// Max over the warp of values >= +0 (finite or +Inf; never NaN or -0): their bits order like the
// values, so one redux.sync on the bits (not five dependent shuffles: the row maxima are on the
// decode-row preparation's latency path).
__device__ __forceinline__ float warp_max(float v) {
  return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(v)));
}

// Max over the CTA of such values. red: 32 floats used by this reduction only (so nothing can
// still be reading them: no barrier before the writes); after the one CTA barrier every warp
// reduces the warps' maxima itself (no second barrier to broadcast a result).
__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_max(lane < nw ? red[lane] : 0.0f);
}

// Max over groups of `lanes` consecutive lanes (lanes = 1, 2, 4, 8).
__device__ __forceinline__ float group_max(float v, int lanes) {
  if (lanes >= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  if (lanes >= 4) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  if (lanes >= 8) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  return v;
}

// Top-2 of 4 scores (finite, >= 0) with the lower-index tie rule: returns a 4-bit keep mask.
// Score i is kept unless two or more of the other three beat it, where j beats i when
// s_j > s_i (j > i) or s_j >= s_i (j < i: the lower index wins a tie), i.e. the reference's
// rank < 2. Six comparisons (b_ij = s_j > s_i for i < j; j < i beats i when !b_ji) and one
// majority function per score instead of twelve comparisons and rank sums.
__device__ __forceinline__ bool maj3(bool a, bool b, bool c) { return (a && b) || (c && (a || b)); }
__device__ __forceinline__ uint32_t top2of4(float s0, float s1, float s2, float s3) {
  const bool b01 = s1 > s0, b02 = s2 > s0, b03 = s3 > s0, b12 = s2 > s1, b13 = s3 > s1, b23 = s3 > s2;
  return (maj3(b01, b02, b03) ? 0u : 1u) | (maj3(!b01, b12, b13) ? 0u : 2u) |
         (maj3(!b02, !b12, b23) ? 0u : 4u) | (maj3(!b03, !b13, !b23) ? 0u : 8u);
}

// NUMERICS.md: one FP32 reciprocal per block, inv = 1/d (IEEE, correctly rounded; 0 when
// d == 0), then code = e2m1(v * inv) with one FP32 multiply per value and deQ = value(code) * d.
__device__ __forceinline__ float block_inv(float d) { return d > 0.0f ? __frcp_rn(d) : 0.0f; }

// q[i] = value(e2m1(v[i] * inv)), the grid values of one chunk (deQ = q * d). e2m1_round where
// v * inv is finite; where 1/d overflowed (d < 2^-128: rows of amax < ~4e-33, bf16 only), 0 * inf
// is NaN and the reference's encode gives it +0: encode + decode there (a uniform branch a
// chunk, as the chunk is inside one scale block).
__device__ __forceinline__ void quantize_chunk(const float (&v)[8], float inv, float (&q)[8]) {
  if (__builtin_expect(!isinf(inv), 1)) {
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = e2m1_round(__fmul_rn(v[i], inv));
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = e2m1_decode(e2m1_encode(__fmul_rn(v[i], inv)));
  }
}

// 8 grid values kept between the passes as 4 bf16x2 words (every E2M1 value is exact in bf16)
__device__ __forceinline__ uint4 pack_grid(const float (&q)[8]) {
  uint4 u;
  uint32_t* w = reinterpret_cast<uint32_t*>(&u);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(q[2 * j], q[2 * j + 1]);
    w[j] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return u;
}
__device__ __forceinline__ float grid_at(const uint4& u, int i) {
  const uint32_t w = reinterpret_cast<const uint32_t*>(&u)[i >> 1];
  return __uint_as_float((i & 1) ? (w & 0xFFFF0000u) : (w << 16));
}

// 8 codes of one chunk, element i in bits 4i..4i+3 (debug outputs)
__device__ __forceinline__ uint32_t codes_of(const float (&q)[8]) {
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) packed |= e2m1_code_of(q[i]) << (4 * i);
  return packed;
}

// E4M3 block scale: returns the scale bits, sets d = fp32(s) * t.
__device__ __forceinline__ uint32_t e4m3_block_scale(float block_amax, float t, float& d) {
  const float denom = __fmul_rn(t, 6.0f);
  const float ratio = denom > 0.0f ? __fdiv_rn(block_amax, denom) : 0.0f;
  const uint32_t s = e4m3_encode(ratio);
  d = __fmul_rn(e4m3_decode(s), t);
  return s;
}

// E8M0 block scale: 2^(floor(log2(amax)) - 2), or 2^-127 for an all-zero block. Sets d = 2^e
// and inv = 2^-e (both exact; 2^-127 is the FP32 subnormal 0x00400000).
__device__ __forceinline__ float pow2_exact(int e) {  // e in [-127, 127]
  return e >= -126 ? __int_as_float((e + 127) << 23) : __int_as_float(0x00400000);
}
__device__ __forceinline__ uint32_t e8m0_block_scale(float block_amax, float& d, float& inv) {
  int e;
  if (block_amax > 0.0f) {
    // floor(log2(amax)) from the exponent bits (amax is finite and > 0; subnormals via frexp)
    const uint32_t b = __float_as_uint(block_amax);
    if ((b >> 23) != 0u) {
      e = (int)(b >> 23) - 127 - 2;
    } else {
      int ex;
      frexpf(block_amax, &ex);  // amax = m * 2^ex, m in [0.5, 1)
      e = ex - 3;
    }
  } else {
    e = -127;
  }
  e = max(-127, min(127, e));
  d = pow2_exact(e);
  inv = pow2_exact(-e);
  return (uint32_t)(e + 127);
}

// chunk of 8 x 16-bit values kept raw in one uint4 (4 registers), converted on use
template <typename T>
__device__ __forceinline__ float elem(const uint4& u, int i) {
  const T* e = reinterpret_cast<const T*>(&u);
  return Elem<T>::to_float(e[i]);
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* p, const float (&v)[8]) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = Elem<T>::from_float(v[i]);
  *reinterpret_cast<uint4*>(p) = u;
}

constexpr int kPrepLargeM = 256;      // rows above which the throughput configuration runs
constexpr int kPrepClusterMaxM = 64;  // rows up to which a row is split over a CTA cluster

// Rows over a cluster (sm_90): each CTA's maximum is pushed into every CTA of the cluster
// (st.async into slot `rank` of their slots, completing 4 bytes on their mbarrier) and each CTA
// waits on its own mbarrier for the cl values. No cluster barrier: its release / acquire
// compiles to a GPU-scope memory fence (MEMBAR.ALL.GPU, ncu's "membar" stall: 1.1-1.6 warps an
// issue in the K = 14336 kernels that pulled the peers' slots behind one, and a CTA could leave
// only after a final one; kernels-H200-producers.json). Pushed values leave nothing to read
// remotely, so no CTA waits for a peer at the end. The barriers are initialised before
// griddepcontrol.wait (their one cluster barrier overlaps the kernel before).
struct ClusterMax {   // one exchange's shared words
  uint64_t bar;       // its mbarrier (one phase: one arrival + 4 cl bytes)
  float slots[8];     // the cluster CTAs' values (maxima, or the norm's partial sums), by rank
};

// Every CTA of the cluster pushes its value v into slot `rank` of every CTA's x and waits for
// the cl values of its own x (one mbarrier phase: each exchange has its own words).
__device__ __forceinline__ void cluster_exchange(float v, ClusterMax& x, int cl, int rank) {
  const int tid = threadIdx.x;
  if (tid == 0) async::mbar_arrive_expect_tx(&x.bar, 4u * cl);
  if (tid < cl) async::st_async_peer_u32(&x.slots[rank], tid, __float_as_uint(v), &x.bar);
  async::mbar_wait(&x.bar, 0);
}

// Max over the row: the CTA's max, then (cl > 1) over the cl CTAs of the cluster. red (32 floats)
// and x are this reduction's own shared words (never reused in the kernel: one CTA barrier and
// one mbarrier phase suffice).
__device__ __forceinline__ float row_max(float v, float* red, ClusterMax& x, int cl, int rank) {
  v = block_max(v, red);
  if (cl > 1) {
    cluster_exchange(v, x, cl, rank);
    v = warp_max((threadIdx.x & 31) < cl ? x.slots[threadIdx.x & 31] : 0.0f);
  }
  return v;
}

// ---- RMSNorm before the preparation (prep_norm) ---------------------------------------------
// Contract (sharq_vllm/producers.py::rms_norm, bit-exact; vLLM's RMSNorm otherwise):
//   s = x (+ residual), FP32 (residual_out = s rounded to the dtype);
//   ss = sum of s*s by a balanced pairwise tree over the channels in order, zero-padded to a
//        power of two (FP32 adds; the fixed order is what makes the sum reproducible: the
//        reference emulates it, and no configuration here changes it);
//   inv = 1 / sqrt(ss / K + eps) (IEEE division and square root, rounded each);
//   y = round(round(s * inv) * weight) in the dtype, the values the preparation then takes.
// Here: one chunk of 8 channels a thread (chunk = thread), the chunk's 8 squares by the same
// tree, then the lanes by an xor butterfly with rising offsets (a butterfly level with offset o
// adds aligned neighbours, i.e. one level of the tree), then the warps the same way. One CTA a
// row holds K <= 8 * 1024 (kPrepNormMaxK).
// Two chunks a thread (V = 2, rows of M > kPrepLargeM: the preparation's throughput
// configuration) keep that order with the CTA at exactly half the padded chunk count P (a power
// of two): thread t holds chunks t and t + P/2, so the CTA's two tree sums are the tree's two
// halves and their sum is its root (launch_norm).
__device__ __forceinline__ float tree8(const float (&q)[8]) {
  return __fadd_rn(__fadd_rn(__fadd_rn(q[0], q[1]), __fadd_rn(q[2], q[3])),
                   __fadd_rn(__fadd_rn(q[4], q[5]), __fadd_rn(q[6], q[7])));
}
__device__ __forceinline__ float warp_tree_sum(float v) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the CTA in tree order (chunk = thread; absent chunks hold 0). red: 32 floats used by
// this sum only (written once a kernel: no barrier before the writes); after the one CTA barrier
// every warp sums the warps' sums itself, in the same order (no second barrier to broadcast).
__device__ __forceinline__ float block_tree_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_tree_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_tree_sum(lane < nw ? red[lane] : 0.0f);
}

// The two halves' tree sums in one pass over the CTA (V = 2; red: 66 floats), then the root.
__device__ __forceinline__ float block_tree_sum2(float a, float b, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  a = warp_tree_sum(a);
  b = warp_tree_sum(b);
  if (lane == 0) {
    red[warp] = a;
    red[33 + warp] = b;
  }
  __syncthreads();
  return __fadd_rn(warp_tree_sum(lane < nw ? red[lane] : 0.0f), warp_tree_sum(lane < nw ? red[33 + lane] : 0.0f));
}

// The row's sum over a cluster (V = 1, cl > 1: launch_norm): CTA r holds chunks
// [r * n, (r + 1) * n) with n a power of two, an aligned subtree of the row's padded tree, so its
// block_tree_sum is that subtree's root and the cl roots combine as the tree's top levels: the
// lanes' butterfly over the slots (zeros past cl, which leave the non-negative sums exact) is
// that tree, the same in every CTA.
__device__ __forceinline__ float row_tree_sum(float v, float* red, ClusterMax& x, int cl, int rank) {
  v = block_tree_sum(v, red);
  if (cl > 1) {
    cluster_exchange(v, x, cl, rank);
    v = warp_tree_sum((threadIdx.x & 31) < cl ? x.slots[threadIdx.x & 31] : 0.0f);
  }
  return v;
}

// The row's V chunks (chunk v*blockDim + tid of this CTA, i.e. cbase + that of the row; absent
// ones past nchunks) normalized in place. cl > 1 (V = 1): the row's sum over the cluster (xs).
template <typename T, int kProd, int V>
__device__ __forceinline__ void rms_norm_row(uint4 (&xc)[V], const uint4 (&wc)[V], int nchunks, int cbase, int row,
                                             int K, const PrepNorm& nrm, float* red, ClusterMax& xs, int cl,
                                             int rank) {
  static_assert(V == 1 || V == 2, "prep_norm: one or two chunks a thread");
  float s[V][8], part[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = v * blockDim.x + threadIdx.x;
    const bool in_row = c < nchunks;
#pragma unroll
    for (int i = 0; i < 8; ++i) s[v][i] = elem<T>(xc[v], i);
    if constexpr (kProd == kPrepAddNorm) {
      const uint4 rc = in_row ? *reinterpret_cast<const uint4*>(static_cast<const T*>(nrm.residual) +
                                                                (int64_t)row * nrm.res_stride + 8 * (cbase + c))
                              : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[v][i] = __fadd_rn(s[v][i], elem<T>(rc, i));
      if (in_row) store_chunk<T>(static_cast<T*>(nrm.residual_out) + (int64_t)row * K + 8 * (cbase + c), s[v]);
    }
    float sq[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) sq[i] = __fmul_rn(s[v][i], s[v][i]);
    part[v] = in_row ? tree8(sq) : 0.0f;
  }
  const float ss = V == 1 ? row_tree_sum(part[0], red, xs, cl, rank) : block_tree_sum2(part[0], part[V - 1], red);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)K), nrm.eps)));
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = v * blockDim.x + threadIdx.x;
    const bool in_row = c < nchunks;
    uint4 out = make_uint4(0, 0, 0, 0);  // chunks past the row stay 0 (inv may be Inf)
    T* o = reinterpret_cast<T*>(&out);
    if (in_row)
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float y = Elem<T>::to_float(Elem<T>::from_float(__fmul_rn(s[v][i], inv)));
      o[i] = Elem<T>::from_float(__fmul_rn(y, elem<T>(wc[v], i)));
    }
    xc[v] = out;
  }
}

// ---- SiLU * mul before the preparation (prep_silu_mul) ------------------------------------------
// Contract (sharq_vllm/producers.py::silu_and_mul): y = round(round(silu(g)) * u) in the dtype,
// silu(g) = g / (1 + exp(-g)) in FP32 with CUDA's expf (PyTorch's own CUDA silu: eager
// F.silu(g) * u, and vLLM's silu_and_mul kernel, compute exactly this): bit-exact with the
// reference evaluated on the GPU; on the CPU, exp is another library's (documented there).
// silu(a)'s division a / d (d = 1 + exp(-a) >= 1) as __fdiv_rn gives it, without a branch an
// element: __fdiv_rn is nvcc's fast path (the reciprocal's approximation, one Newton step, the
// quotient and one correction; read off its SASS) guarded by FCHK, which sends operands that could
// over- or underflow in that path to a slow subroutine, a branch and a call an element that keep
// the 8 elements of a chunk from overlapping. Where 2^-40 <= |a| <= 2^40 and a >= -40 every
// operand and intermediate is far inside the normal range (d <= e^40 < 2^58, the quotient within
// [2^-98, 2^40]), so the fast path is exact there (it is correctly rounded whenever nothing
// over- or underflows) and runs unguarded; elements outside take __fdiv_rn itself, one branch a
// chunk. Same bits either way (tests/gpu/test_prep_gpu.py::test_silu_mul_values_bit_exact:
// gates on both sides of each bound; the plain __fdiv_rn version: git show 104bd39).
__device__ __forceinline__ float rcp_approx(float d) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}
__device__ __forceinline__ bool silu_div_unguarded(float a) {
  const float m = fabsf(a);
  return a >= -40.0f && m >= 0x1p-40f && m <= 0x1p40f;  // false for NaN
}
__device__ __forceinline__ float silu_div_fast(float a, float d) {
  const float r0 = rcp_approx(d);
  const float r1 = __fmaf_rn(r0, __fmaf_rn(-d, r0, 1.0f), r0);
  const float q0 = __fmul_rn(a, r1);
  return __fmaf_rn(r1, __fmaf_rn(-d, q0, a), q0);
}

template <typename T>
__device__ __forceinline__ uint4 silu_mul_chunk(uint4 g, uint4 u) {
  uint4 out;
  T* o = reinterpret_cast<T*>(&out);
  float q[8];
  bool guarded = false;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float a = elem<T>(g, i);
    q[i] = silu_div_fast(a, __fadd_rn(1.0f, expf(-a)));
    guarded |= !silu_div_unguarded(a);
  }
  if (guarded) {  // rare: recompute those elements with the guarded division
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float a = elem<T>(g, i);
      if (!silu_div_unguarded(a)) q[i] = __fdiv_rn(a, __fadd_rn(1.0f, expf(-a)));
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float s = Elem<T>::to_float(Elem<T>::from_float(q[i]));
    o[i] = Elem<T>::from_float(__fmul_rn(s, elem<T>(u, i)));
  }
  return out;
}

// The producer alone, for the tests (torch.ops.sharq_C.silu_mul): y [M, K] = silu_mul_chunk of
// x's two halves, one chunk a thread: the values the fused kernel quantizes, held bit for bit to
// producers.silu_and_mul on the GPU (the fused kernel's x_hat alone would hide a last-place
// difference under the 4-bit quantization).
template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ y, int M, int K) {
  const int per_row = K >> 3;
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= (int64_t)M * per_row) return;
  const int row = (int)(c / per_row), cc = (int)(c - (int64_t)row * per_row);
  const T* xr = x + (int64_t)row * x_stride + 8 * cc;
  *reinterpret_cast<uint4*>(y + (int64_t)row * K + 8 * cc) =
      silu_mul_chunk<T>(*reinterpret_cast<const uint4*>(xr), *reinterpret_cast<const uint4*>(xr + K));
}

// One row per cluster of `cl` CTAs (cl = 1: plain launch, one row per CTA); CTA rank r of the
// cluster owns chunks [r * K/(8 cl), (r+1) * K/(8 cl)) of its row (a multiple of 8 chunks, so
// scale blocks never straddle CTAs).
// kDebug: the debug outputs are written (prep_debug); the serving kernel has no debug code.
// kProd: what produces the row the preparation takes. kPrepPlain: x itself. kPrepNorm /
// kPrepAddNorm (prep_norm; V <= 2, and cl > 1 at V = 1 only, launch_norm): the row normalized by
// rms_norm_row above. kPrepSiluMul (prep_silu_mul; any configuration, it is elementwise):
// silu(gate) * up of x's two halves, silu_mul_chunk above.
// kPrepMaxThreads' entry for V chunks a thread, and the CTAs an SM its launch bounds promise
template <int V>
constexpr int prep_max_threads() {
  return kPrepMaxThreads[V == 1 ? 0 : V == 2 ? 1 : V == 4 ? 2 : 3];
}
template <int V>
constexpr int prep_min_ctas() {
  return V == 4 ? 2 : 1;
}
template <typename T, int V, bool kDebug, int kProd = kPrepPlain>
__global__ void __launch_bounds__(prep_max_threads<V>(), prep_min_ctas<V>())
prep_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ xhat, int K, int fmt,
            int pattern, int bb_lanes, int rb_lanes, PrepDebug dbg, int cl, PrepNorm nrm, bool frag) {
  constexpr bool kNorm = kProd == kPrepNorm || kProd == kPrepAddNorm;
  constexpr bool kNorm2 = kNorm && V == 2;
  __shared__ float red[kNorm2 ? 66 : 33];  // the norm's block sums (its two halves at V = 2: 66)
  __shared__ float maxred[2][32];          // the two row maxima's warp maxima
  __shared__ ClusterMax cmax[kNorm ? 3 : 2];  // the exchanges over a cluster: the two row maxima
                                              // (and the norm's sum of squares: cmax[2])
  // Launched with programmatic dependent launch (kPrepPdl): wait for the kernel before (the
  // norm or activation writing x) before any access to memory it may write, read or write
  // (x_hat's buffer may be one the previous kernel still reads). A no-op without the attribute.
  // The norm's weight chunks are loaded before the wait: no kernel of the forward pass writes a
  // model parameter, and so its load overlaps the kernel before instead of following the
  // row's sum of squares (one memory latency off the critical path).
  uint4 wraw[kNorm ? V : 1];
  if constexpr (kNorm) {  // this CTA's chunks of the weight (cl > 1, V = 1 only: from its rank's first chunk)
    const bool split = V == 1 && cl > 1;
    const int wchunks = split ? (K >> 3) / cl : K >> 3;
    const int wbase = split ? (int)(blockIdx.x % cl) * wchunks : 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int c = v * blockDim.x + threadIdx.x;
      wraw[v] = c < wchunks ? *reinterpret_cast<const uint4*>(static_cast<const T*>(nrm.weight) + 8 * (wbase + c))
                            : make_uint4(0, 0, 0, 0);
    }
  }
  if (cl > 1) {  // the exchanges' barriers, ready before any peer signals them
    if (threadIdx.x == 0) {
      async::mbar_init(&cmax[0].bar, 1);
      async::mbar_init(&cmax[1].bar, 1);
      if constexpr (kNorm) async::mbar_init(&cmax[2].bar, 1);
      async::mbar_fence_init();
    }
    async::cluster_arrive_relaxed();
    async::cluster_wait();
  }
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  // let a PDL-launched consumer (the stream GEMM) start its weight loads now; it still waits
  // for this grid's completion (griddepcontrol.wait) before it reads x_hat
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int row = cl == 1 ? (int)blockIdx.x : (int)blockIdx.x / cl;
  const int rank = blockIdx.x - row * cl;
  const int tid = threadIdx.x;
  const int nchunks = (K >> 3) / cl;       // chunks of this CTA
  const int cbase = rank * nchunks;        // its first chunk in the row
  const T* xr = x + (int64_t)row * x_stride + 8 * cbase;

  uint4 xraw[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = v * blockDim.x + tid;
    if constexpr (kProd == kPrepSiluMul)  // x rows hold [gate | up], each K wide
      xraw[v] = c < nchunks ? silu_mul_chunk<T>(*reinterpret_cast<const uint4*>(xr + 8 * c),
                                                *reinterpret_cast<const uint4*>(xr + K + 8 * c))
                            : make_uint4(0, 0, 0, 0);
    else
      xraw[v] = c < nchunks ? *reinterpret_cast<const uint4*>(xr + 8 * c) : make_uint4(0, 0, 0, 0);
  }
  if constexpr (kNorm) rms_norm_row<T, kProd, V>(xraw, wraw, nchunks, cbase, row, K, nrm, red, cmax[2], cl, rank);
  uint32_t mag2 = 0;  // max |x| as 16-bit bits, two lanes (sign cleared: bits order like |x|)
#pragma unroll
  for (int v = 0; v < V; ++v) {
    mag2 = __vmaxu2(mag2, xraw[v].x & 0x7FFF7FFFu);
    mag2 = __vmaxu2(mag2, xraw[v].y & 0x7FFF7FFFu);
    mag2 = __vmaxu2(mag2, xraw[v].z & 0x7FFF7FFFu);
    mag2 = __vmaxu2(mag2, xraw[v].w & 0x7FFF7FFFu);
  }
  const uint32_t mag = max(mag2 & 0xFFFFu, mag2 >> 16);
  // One reduction for both: a non-finite row (Inf or NaN bits) reduces to +Inf (a finite row's
  // max is finite). The reference zeroes a non-finite row before quantizing it (x_hat row NaN).
  float amax = mag >= Elem<T>::kInfBits ? __int_as_float(0x7f800000) : Elem<T>::bits_to_float(mag);
  amax = row_max(amax, maxred[0], cmax[0], cl, rank);
  const bool bad_row = isinf(amax);
  if (bad_row) {
    amax = 0.0f;
#pragma unroll
    for (int v = 0; v < V; ++v) xraw[v] = make_uint4(0, 0, 0, 0);
  }

  const bool mx = fmt == kMXFP4;
  // bb_lanes / rb_lanes: lanes per backbone / residual scale block (a lane holds 8 channels)
  const float t_s = mx ? 0.0f : __fdiv_rn(amax, 2688.0f);

  uint4 bb_q[V];  // backbone grid values of each chunk (bf16x2), dequantized again in pass 2
  float bb_d[V];  // and their block's FP32 dequantization scale
  float ramax = 0.0f;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = v * blockDim.x + tid;
    float xv[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) xv[i] = elem<T>(xraw[v], i);
    // --- mask
    uint32_t keep = 0xFFu;
    if (pattern == kTwoOfFour) {
      keep = top2of4(fabsf(xv[0]), fabsf(xv[1]), fabsf(xv[2]), fabsf(xv[3])) |
             (top2of4(fabsf(xv[4]), fabsf(xv[5]), fabsf(xv[6]), fabsf(xv[7])) << 4);
    } else if (pattern == kFourOfEightPairs) {
      uint32_t kp = top2of4(fmaxf(fabsf(xv[0]), fabsf(xv[1])),
                            fmaxf(fabsf(xv[2]), fabsf(xv[3])),
                            fmaxf(fabsf(xv[4]), fabsf(xv[5])),
                            fmaxf(fabsf(xv[6]), fabsf(xv[7])));
      keep = 0;
#pragma unroll
      for (int u = 0; u < 4; ++u) keep |= ((kp >> u) & 1u) * (3u << (2 * u));
    }
    float sv[8];
    float bam = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      sv[i] = ((keep >> i) & 1u) ? xv[i] : 0.0f;
      bam = fmaxf(bam, fabsf(sv[i]));
    }
    bam = group_max(bam, bb_lanes);
    float d, inv;
    uint32_t sbits;
    if (mx) {
      sbits = e8m0_block_scale(bam, d, inv);
    } else {
      sbits = e4m3_block_scale(bam, t_s, d);
      inv = block_inv(d);
    }
    float q[8];
    quantize_chunk(sv, inv, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) ramax = fmaxf(ramax, fabsf(__fsub_rn(xv[i], __fmul_rn(q[i], d))));
    bb_q[v] = pack_grid(q);
    // A non-finite row's x_hat is NaN. The serving kernel gets it from a NaN backbone scale (a
    // select a chunk, not one an element): pass 2's x_hat sums are then NaN (fmaxf drops the
    // NaN from the residual block maxima). The debug kernel keeps the zeroed row's numbers, as
    // the reference's debug outputs, and sets x_hat to NaN at the end.
    bb_d[v] = (!kDebug && bad_row) ? __int_as_float(0x7fc00000) : d;
    if (kDebug && c < nchunks) {
      const int gc = cbase + c;
      const int64_t rowK = (int64_t)row * K;
      if (dbg.mask) {
        uint2 m;
        m.x = ((keep >> 0) & 1u) | (((keep >> 1) & 1u) << 8) | (((keep >> 2) & 1u) << 16) |
              (((keep >> 3) & 1u) << 24);
        m.y = ((keep >> 4) & 1u) | (((keep >> 5) & 1u) << 8) | (((keep >> 6) & 1u) << 16) |
              (((keep >> 7) & 1u) << 24);
        *reinterpret_cast<uint2*>(dbg.mask + rowK + 8 * gc) = m;
      }
      if (dbg.bb_codes) *reinterpret_cast<uint32_t*>(dbg.bb_codes + rowK / 2 + 4 * gc) = codes_of(q);
      if (dbg.bb_scales && (gc % bb_lanes) == 0)
        dbg.bb_scales[(int64_t)row * (K / (8 * bb_lanes)) + gc / bb_lanes] = (uint8_t)sbits;
    }
  }
  ramax = row_max(ramax, maxred[1], cmax[1], cl, rank);
  const float t_r = mx ? 0.0f : __fdiv_rn(ramax, 2688.0f);
  if (kDebug && dbg.tscales && tid == 0 && rank == 0) {
    dbg.tscales[2 * row + 0] = t_s;
    dbg.tscales[2 * row + 1] = t_r;
  }

#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = v * blockDim.x + tid;
    float xv[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) xv[i] = elem<T>(xraw[v], i);
    float rv[8], deq_s[8];
    float bam = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      deq_s[i] = __fmul_rn(grid_at(bb_q[v], i), bb_d[v]);
      rv[i] = __fsub_rn(xv[i], deq_s[i]);
      bam = fmaxf(bam, fabsf(rv[i]));
    }
    bam = group_max(bam, rb_lanes);
    float d, inv;
    uint32_t sbits;
    if (mx) {
      sbits = e8m0_block_scale(bam, d, inv);
    } else {
      sbits = e4m3_block_scale(bam, t_r, d);
      inv = block_inv(d);
    }
    float q[8], out[8];
    quantize_chunk(rv, inv, q);
#pragma unroll
    for (int i = 0; i < 8; ++i)
      out[i] = (kDebug && bad_row) ? __int_as_float(0x7fc00000) : __fadd_rn(deq_s[i], __fmul_rn(q[i], d));
    if (c < nchunks) {
      const int gc = cbase + c;
      // fragment order (frag, sharq_kernels.h xhat_fragment_rows): chunk gc = 8 t + 2 q + h of
      // row 8 G + g at [G][t][h][g][q] (layout.py, xhat_to_fragments)
      const int64_t dst = frag ? (int64_t)(row >> 3) * 8 * K + (gc >> 3) * 512 + (gc & 1) * 256 + (row & 7) * 32 +
                                     ((gc >> 1) & 3) * 8
                               : (int64_t)row * K + 8 * gc;
      store_chunk<T>(xhat + dst, out);
    }
    if (kDebug && c < nchunks) {
      const int gc = cbase + c;
      const int64_t rowK = (int64_t)row * K;
      if (dbg.res_codes) *reinterpret_cast<uint32_t*>(dbg.res_codes + rowK / 2 + 4 * gc) = codes_of(q);
      if (dbg.res_scales && (gc % rb_lanes) == 0)
        dbg.res_scales[(int64_t)row * (K / (8 * rb_lanes)) + gc / rb_lanes] = (uint8_t)sbits;
    }
  }
}

// Programmatic dependent launch of the preparation: its CTAs are placed while the kernel before
// it (RMSNorm, SiLU * mul, attention, the previous GEMM) finishes and wait for it in
// griddepcontrol.wait, instead of being launched after it: the four Llama-3.1-8B preparations
// 15.27 -> 13.35 us at M = 1 in a graph with a GEMM before each (H200,
// kernels-H200-prep-pdl-waves.json). EXTRA_NVFLAGS=-DSHARQ_PREP_PDL=0 builds the A/B's baseline.
#ifndef SHARQ_PREP_PDL
#define SHARQ_PREP_PDL 1
#endif
constexpr bool kPrepPdl = SHARQ_PREP_PDL;
// Diagnostic, off: the preparation kernels' preferred shared-memory carveout in percent
// (EXTRA_NVFLAGS=-DSHARQ_PREP_CARVEOUT=100: the most shared memory, as the wgmma GEMMs take).
// Measured with tools/gpu/probe_prep_overlap.py (kernels-H200-pre2.json): no gain before the
// wgmma GEMMs (M = 64 / 128), and before the stream GEMM (whose carveout stays the driver's
// choice) the preparation's exposed time grows by 1-8 us a layer at M = 16: an SM switches
// carveouts only once idle, so a mismatch between consecutive kernels undoes the PDL overlap.
#ifndef SHARQ_PREP_CARVEOUT
#define SHARQ_PREP_CARVEOUT -1
#endif

template <typename T, int V, int kProd = kPrepPlain>
cudaError_t launch_v(const T* xp, int64_t x_stride, T* yp, int M, int K, int fmt, int pattern,
                     int bb_lanes, int rb_lanes, const PrepDebug& dbg, int cl, cudaStream_t stream,
                     const PrepNorm& nrm = PrepNorm{}, int threads = 0, bool frag = false) {
  const int nchunks = K / 8 / cl;
  if (threads == 0) threads = ((nchunks + V - 1) / V + 31) / 32 * 32;
  if (threads > prep_max_threads<V>()) return cudaErrorInvalidValue;
  auto kernel = prep_kernel<T, V, false, kProd>;
  if constexpr (kProd == kPrepPlain)  // debug outputs: the plain preparation only (prep_debug)
    if (dbg.any()) kernel = prep_kernel<T, V, true, kProd>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)M * (unsigned)cl);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int na = 0;
  attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[na++].val.programmaticStreamSerializationAllowed = kPrepPdl ? 1 : 0;
  if (cl > 1) {
    attr[na].id = cudaLaunchAttributeClusterDimension;
    attr[na].val.clusterDim.x = cl;
    attr[na].val.clusterDim.y = 1;
    attr[na++].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = na;
  if constexpr (SHARQ_PREP_CARVEOUT >= 0) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, SHARQ_PREP_CARVEOUT);
    if (e != cudaSuccess) return e;
  }
  return cudaLaunchKernelEx(&cfg, kernel, xp, x_stride, yp, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, nrm, frag);
}

// RMSNorm + preparation: one CTA a row, launched like the preparation (PDL). One chunk a thread
// up to kPrepLargeM rows; above, two (the preparation's throughput configuration) on a CTA of
// half the padded chunk count, which keeps the norm's tree order (rms_norm_row).
// force_v: 1 or 2, force_cl: CTAs a row at one chunk a thread (benchmarks, tests), 0 = the rule.
inline int pow2_ceil(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}
// Rows of at most 8192 channels (one CTA holds them at a chunk a thread) at decode rows
// (M <= kPrepShortClusterMaxM), plain and RMSNorm preparations alike: kPrepShortCluster CTAs a
// row. 1, one CTA a row: splitting such rows over 2 / 4 / 8 CTAs makes the preparation alone
// faster (the three 4096-channel ones of a layer: 9.3 -> 8.4-8.6 us at M = 1) but leaves more
// of it exposed before the GEMM at every M, since each SM a preparation CTA holds delays the
// GEMM CTAs meant for it (sum over qkv, o, gate_up: 3.2 -> 3.5-3.7 us at M = 1, 4.0 -> 4.5-5.0
// at 16, 5.5 -> 6.8-8.1 at 32, 6.9-7.1 -> 10.4-11.3 at 64; kernels-H200-short-row-clusters.json).
// Build knobs for that A/B: -DSHARQ_PREP_SHORT_CL=cl, -DSHARQ_PREP_SHORT_CL_MAXM=M. A forced
// cluster (force_cl) needs K % (64 cl) == 0 (scale blocks inside a CTA) and, with the RMSNorm,
// each CTA's chunks a power of two (rms_norm_row: an aligned subtree of the row's tree).
#ifndef SHARQ_PREP_SHORT_CL
#define SHARQ_PREP_SHORT_CL 1
#endif
#ifndef SHARQ_PREP_SHORT_CL_MAXM
#define SHARQ_PREP_SHORT_CL_MAXM 16
#endif
constexpr int kPrepShortCluster = SHARQ_PREP_SHORT_CL;
constexpr int kPrepShortClusterMaxM = SHARQ_PREP_SHORT_CL_MAXM;
inline bool prep_norm_cluster_holds(int K, int cl) {
  if (cl == 1) return true;
  const int n = K / 8 / cl;
  return cl >= 2 && cl <= 8 && K % (64 * cl) == 0 && (n & (n - 1)) == 0;
}

template <typename T>
cudaError_t launch_norm(const void* x, int64_t x_stride, void* xhat, int M, int K, int fmt, int pattern,
                        int bb_lanes, int rb_lanes, const PrepNorm& nrm, int force_v, int force_cl,
                        cudaStream_t stream, bool frag) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(xhat);
  const int half = pow2_ceil(K / 8) / 2;  // the V = 2 CTA: half the padded chunks (>= one warp)
  const int v = force_v > 0 ? force_v : (M > kPrepLargeM && half >= 32 ? 2 : 1);
  if (v == 2 && half < 32) return cudaErrorInvalidValue;
  int cl = 1;
  if (force_cl > 0)
    cl = force_cl;
  else if (v == 1 && M <= kPrepShortClusterMaxM && prep_norm_cluster_holds(K, kPrepShortCluster))
    cl = kPrepShortCluster;
  if (cl > 1 && (v != 1 || !prep_norm_cluster_holds(K, cl))) return cudaErrorInvalidValue;
  const bool add = nrm.residual != nullptr;
  const PrepDebug none{};
  switch (v) {
    case 1:
      return add ? launch_v<T, 1, kPrepAddNorm>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, none, cl, stream, nrm, 0, frag)
                 : launch_v<T, 1, kPrepNorm>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, none, cl, stream, nrm, 0, frag);
    case 2:
      return add ? launch_v<T, 2, kPrepAddNorm>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, none, 1, stream, nrm, half, frag)
                 : launch_v<T, 2, kPrepNorm>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, none, 1, stream, nrm, half, frag);
    default:
      return cudaErrorInvalidValue;
  }
}

// Rows split over a thread-block cluster (M <= kPrepClusterMaxM). K/(8 cl) must be a whole
// number of 8-chunk (64-channel) groups, so scale blocks (<= 64 channels) stay inside one CTA.
// A row that one CTA holds at one chunk a thread (K <= 8192) is not split (kPrepShortCluster
// above: faster alone since the pushed maxima, K = 4096 in prep_configs_us of kernels-H200.json,
// but more exposed before the GEMM).
// Longer rows: the largest cluster up to M = kPrepWideClusterMaxM (K = 14336: 8 CTAs 4.3 / 5.0 us
// at M = 1 / 16, one CTA at 2 chunks a thread 6.2 / 6.3 us; 4 CTAs 4.75 / 4.84), above it the
// smallest cluster that gives one chunk a thread (M = 64: 2 CTAs 7.2 us, 8 CTAs 7.8 us).
// SiLU * mul in front (down): the largest cluster up to M = 8, then 4 CTAs up to
// kPrepSiluMidClusterMaxM, above it the rule of the preparation alone (M = 64: 2 CTAs). Measured
// as the time left exposed before the down GEMM at K = 14336 (tools/gpu/probe_prep_overlap.py
// --producers serving, kernels-H200-producers.json): M = 16 2.9 us on 4 CTAs against 3.7-3.8 on
// 8 and 4.1-4.6 on 2 (three runs); M = 24 / 32 / 48 4.3 / 4.4-4.8 / 5.4 on 4 against 4.9-5.2 /
// 4.8-5.4 / 5.7-5.9 on 2.
constexpr int kPrepWideClusterMaxM = 16;
constexpr int kPrepSiluWideClusterMaxM = 8;
constexpr int kPrepSiluMidClusterMaxM = 48;
inline int prep_cluster_size(int M, int K, bool silu = false) {
  if (!silu && M <= kPrepShortClusterMaxM && K / 8 <= 1024 && K % (64 * kPrepShortCluster) == 0)
    return kPrepShortCluster;
  if (M > kPrepClusterMaxM || K % 64 || K / 8 <= 1024) return 1;
  const int groups = K / 64;
  if (silu && M > kPrepSiluWideClusterMaxM && M <= kPrepSiluMidClusterMaxM && groups % 4 == 0 && K / 8 / 4 <= 1024)
    return 4;
  if (M <= (silu ? kPrepSiluWideClusterMaxM : kPrepWideClusterMaxM)) {
    for (int cl = 8; cl >= 2; --cl)
      if (groups % cl == 0) return cl;
    return 1;
  }
  for (int cl = 2; cl <= 8; ++cl)
    if (groups % cl == 0 && K / 8 / cl <= 1024) return cl;
  return 1;
}

template <typename T, int kProd = kPrepPlain>
cudaError_t launch_prep_t(const void* x, int64_t x_stride, void* xhat, int M, int K, int fmt,
                          int pattern, int bb_lanes, int rb_lanes, const PrepDebug& dbg, int force_v,
                          int force_cl, cudaStream_t stream, bool frag = false) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(xhat);
  // Decode (M <= 64): latency-bound; a row longer than one CTA holds at a chunk a thread is
  // split over a cluster of CTAs (SMs) exchanging the two row maxima through distributed shared
  // memory (prep_cluster_size). Medium M: one CTA a row, one 8-channel chunk a thread (up to
  // K = 8192).
  // Large M (> 256): throughput-bound, 2 chunks a thread (K=4096: 256 threads a row): fewer
  // barrier participants and shuffle rounds per element, 2 independent 16-byte loads a thread.
  // Every configuration does the same per-element arithmetic: identical bits (tested).
  int cl = prep_cluster_size(M, K, kProd == kPrepSiluMul);
  if (force_cl > 0) {  // benchmarks / tests: an explicit configuration
    cl = force_cl;
    if (cl > 8 || (cl > 1 && K % (64 * cl))) return cudaErrorInvalidValue;
  }
  const int nchunks = K / 8 / cl;
  if (force_v > 0) {
    switch (force_v) {
      case 1: return launch_v<T, 1, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
      case 2: return launch_v<T, 2, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
      case 4: return launch_v<T, 4, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
      case 8: return launch_v<T, 8, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
      default: return cudaErrorInvalidValue;
    }
  }
  // Large M: 2 chunks a thread while a row fits 1024 chunks (K <= 8192: 4 CTAs of 256 threads an
  // SM at K = 4096). Longer rows (1025..1792 chunks, K <= 14336) take 4 chunks a thread on CTAs
  // bounded to 448 threads, two an SM: at 2 chunks a thread such a row needs more than 512 threads
  // of 64 registers, so one CTA (one row) held the SM and its two row reductions idled it.
  // H200, K = 14336, bf16 (kernels-H200-prep-2cta.json): 48.5 -> 40.4 us at M = 1024, 179 -> 146
  // at 4096, 692 -> 564 at 16384 (SiLU * mul in front: 64.6 -> 57.4, 249 -> 213, 964 -> 814).
  // (The H100 sweep, kernels-H100.json, had V = 4 at 100 registers, one CTA an SM: 20-25% slower.)
  if (M > kPrepLargeM && nchunks > 1024 && nchunks <= 4 * prep_max_threads<4>())
    return launch_v<T, 4, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
  if (M > kPrepLargeM && nchunks <= 2 * 1024)
    return launch_v<T, 2, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
  if (nchunks <= 1024) return launch_v<T, 1, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
  if (nchunks <= 2048) return launch_v<T, 2, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
  return launch_v<T, 8, kProd>(xp, x_stride, yp, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, cl, stream, PrepNorm{}, 0, frag);
}

// the arguments every preparation launch shares
bool prep_args_ok(int fmt, int pattern, int backbone_block, int residual_block, int K) {
  if (fmt != kNVFP4 && fmt != kMXFP4) return false;
  if (pattern != kDense && pattern != kTwoOfFour && pattern != kFourOfEightPairs) return false;
  // a scale block spans 1, 2, 4 or 8 lanes of 8 channels (group_max), and the backbone block
  // holds whole residual blocks
  const auto lanes_ok = [](int block) { return block == 16 || block == 32 || block == 64; };
  if (!lanes_ok(backbone_block) || !lanes_ok(residual_block) || backbone_block % residual_block) return false;
  return K > 0 && K % backbone_block == 0 && K % 8 == 0 && K <= 8 * 8 * kPrepMaxThreads[3];
}

}  // namespace

cudaError_t launch_prep_norm(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                             int fmt, int pattern, int backbone_block, int residual_block,
                             const PrepNorm& norm, cudaStream_t stream, int force_v, int force_cl, int x_frag) {
  if (M == 0) return cudaSuccess;
  if (!xhat_fragment_valid(x_frag)) return cudaErrorInvalidValue;
  if (!prep_args_ok(fmt, pattern, backbone_block, residual_block, K) || K > kPrepNormMaxK || !norm.weight ||
      (norm.residual != nullptr) != (norm.residual_out != nullptr))
    return cudaErrorInvalidValue;
  const int bb_lanes = backbone_block / 8, rb_lanes = residual_block / 8;
  const bool frag = xhat_fragment_rows(M, x_frag);
  switch (dtype) {
    case kBF16: return launch_norm<__nv_bfloat16>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, norm, force_v, force_cl, stream, frag);
    case kFP16: return launch_norm<__half>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, norm, force_v, force_cl, stream, frag);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_prep_silu_mul(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                                 int fmt, int pattern, int backbone_block, int residual_block,
                                 cudaStream_t stream, int force_v, int force_cl, int x_frag) {
  if (M == 0) return cudaSuccess;
  if (!xhat_fragment_valid(x_frag)) return cudaErrorInvalidValue;
  if (!prep_args_ok(fmt, pattern, backbone_block, residual_block, K)) return cudaErrorInvalidValue;
  const int bb_lanes = backbone_block / 8, rb_lanes = residual_block / 8;
  const PrepDebug none{};
  const bool frag = xhat_fragment_rows(M, x_frag);
  switch (dtype) {
    case kBF16: return launch_prep_t<__nv_bfloat16, kPrepSiluMul>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, none, force_v, force_cl, stream, frag);
    case kFP16: return launch_prep_t<__half, kPrepSiluMul>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, none, force_v, force_cl, stream, frag);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_silu_mul(const void* x, int64_t x_stride, void* y, int M, int K, int dtype, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  if (K <= 0 || K % 8) return cudaErrorInvalidValue;
  const int64_t chunks = (int64_t)M * (K / 8);
  const unsigned blocks = (unsigned)((chunks + 255) / 256);
  switch (dtype) {
    case kBF16:
      silu_mul_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), x_stride,
                                                                 static_cast<__nv_bfloat16*>(y), M, K);
      return cudaGetLastError();
    case kFP16:
      silu_mul_kernel<__half><<<blocks, 256, 0, stream>>>(static_cast<const __half*>(x), x_stride, static_cast<__half*>(y), M, K);
      return cudaGetLastError();
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_prep(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                        int fmt, int pattern, int backbone_block, int residual_block,
                        const PrepDebug& dbg, cudaStream_t stream, int force_v, int force_cl, int x_frag) {
  if (M == 0) return cudaSuccess;
  if (!xhat_fragment_valid(x_frag)) return cudaErrorInvalidValue;
  if (!prep_args_ok(fmt, pattern, backbone_block, residual_block, K)) return cudaErrorInvalidValue;
  if (x_frag != kXhatFragOff && dbg.any()) return cudaErrorInvalidValue;
  const int bb_lanes = backbone_block / 8, rb_lanes = residual_block / 8;
  const bool frag = xhat_fragment_rows(M, x_frag);
  switch (dtype) {
    case kBF16: return launch_prep_t<__nv_bfloat16>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, force_v, force_cl, stream, frag);
    case kFP16: return launch_prep_t<__half>(x, x_stride, xhat, M, K, fmt, pattern, bb_lanes, rb_lanes, dbg, force_v, force_cl, stream, frag);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
