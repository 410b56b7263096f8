// gemm_wgmma.cu: the SharQ GEMM for M > 16 rows on Hopper: warpgroup MMA (wgmma) with the FP4
// weights decoded to bf16/fp16 IN REGISTERS (no dequantization pass, no cuBLAS detour).
//
// Orientation: the kernel computes Y^T tiles, D[weight rows x tokens] = W x X^T, so that the
// weights are wgmma's A operand, which may come from registers: each warp decodes its 16-row
// strip of a 64-k tile straight into the A fragment (fp4_tile.cuh: one 16-byte load, the scale
// codes, and/shift/or + one multiply per pair of values; the tiled layout already is the per-warp
// A fragment layout, in natural k order). The prepared activation x_hat is operand B (tokens =
// wgmma N), brought into shared memory by the tensor-memory accelerator (TMA, 128-byte swizzle)
// and read by wgmma through a matrix descriptor.
//
// CTA = 3 warpgroups (warp specialisation, setmaxnreg): WG0 = producer, WG1-2 = consumers.
//   * producer: one thread issues, per 64-k stage, three tensor copies (TMA): the TOK x 64 x_hat
//     tile (rows past M zero-filled), the 8 strips' codes (8 x 512 B) and their scale codes, all
//     completing on the stage's mbarrier; S stages in flight.
//   * consumers: WG c owns weight rows 64c..64c+63 of the CTA's 128 (4 strips, one per warp) and
//     all TOK tokens: wgmma m64nTOKk16 x 4 per stage, A double-buffered in registers so stage i+1
//     is decoded while stage i's wgmmas run (wait_group 1), then the stage is released.
//   * S stages (mbarriers full / empty) in a shared-memory ring.
// Split-K: a thread-block cluster of CL CTAs (CL = 1, 2, 4, 8) shares one output tile, rank r
// taking k-tiles [r*kts, (r+1)*kts); each CTA leaves its FP32 tile in shared memory and the
// ranks sum the CL tiles through distributed shared memory in rank order (deterministic, no
// atomics, no workspace). Epilogue: tile x tensor_scale * 2^7 (+ bias), rounded once, stored
// row-major (token rows, coalesced along N).
// Tile plan (TOK, CL): wgmma_plan() below.
#include "fp4_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"
#include "wgmma_rs.cuh"

#include <algorithm>

namespace sharq {
namespace {

constexpr int kWgThreads = 128;
constexpr int kConsumerWGs = 2;
constexpr int kThreads = (1 + kConsumerWGs) * kWgThreads;  // 384
constexpr int kStrips = 4 * kConsumerWGs;                  // strips (16 rows) a CTA: 128 rows
constexpr int kRows = 16 * kStrips;
constexpr int kSmemBudget = 227 * 1024;
// registers a thread: the producer gives some to the consumers (128*88 + 256*208 = 384*168);
// both return to the launch value (168) for the epilogue, which every thread runs
constexpr int kProducerRegs = 88, kConsumerRegs = 208, kLaunchRegs = 168;

template <int TOK>
struct Tile {
  static constexpr int kX = TOK * 128;              // x_hat: TOK rows x 64 k x 2 B (swizzled)
  static constexpr int kA = kStrips * kTileBytes;   // codes
  static constexpr int kS = kStrips * 64;           // scale codes (8 x 64 | 32 B)
  static constexpr int kStage = (kX + kA + kS + 1023) / 1024 * 1024;  // x tiles 1024-B aligned
  static constexpr int kBars = 1024;                // barriers + alignment slack
  static constexpr int kStagesMax = (kSmemBudget - 2 * kBars) / kStage;
  static constexpr int kStages = kStagesMax > 8 ? 8 : kStagesMax;
  static constexpr int kPitch = kRows + 4;          // floats a token row of the FP32 tile
  static constexpr int kRing = kStages * kStage;
  static_assert(TOK * kPitch * 4 <= kRing, "the FP32 output tile must fit in the ring");
  static constexpr int kSmem = kRing + 2 * kBars;
};

// wgmma matrix descriptor of a K-major operand stored with the 128-byte swizzle (what the TMA
// wrote): rows of 128 B, 8-row groups 1024 B apart (SBO); LBO unused (1); layout type 1 (bits
// 62-63). The k16 step j of the 64-k tile starts 32 B further (the swizzle is applied by address).
__device__ __forceinline__ uint64_t b_desc_sw128(uint32_t smem_addr) {
  return (uint64_t)((smem_addr >> 4) & 0x3FFF) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

template <typename T, int TOK>
__global__ void __launch_bounds__(kThreads, 1)
gemm_wgmma_kernel(const __grid_constant__ CUtensorMap xmap, const __grid_constant__ CUtensorMap qmap,
                  const __grid_constant__ CUtensorMap smap, const float* __restrict__ tscale,
                  const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int nstrips,
                  int n_valid, int K, int wblock, int cl, int kts) {
  using TL = Tile<TOK>;
  constexpr int S = TL::kStages;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // 1024-byte alignment for the swizzled TMA tiles (the runtime only promises 16 bytes)
  uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + TL::kRing);
  uint64_t* empty = full + S;

  const int KT = K >> 6;
  const int SBT = tile_scale_bytes(wblock);
  const int rank = (int)cluster_rank();
  const int sb = ((int)blockIdx.x / cl) * kStrips;  // first strip of the CTA
  const int m0 = (int)blockIdx.y * TOK;             // first token of the tile
  const int kt0 = min(rank * kts, KT), kt1 = min(kt0 + kts, KT);
  const int nk = kt1 - kt0;
  const int wg = threadIdx.x / kWgThreads;
  const int lane = threadIdx.x & 31;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&full[s], 1);  // the producer's expect_tx arrival (+ the copies' bytes)
      mbar_init(&empty[s], 4 * kConsumerWGs);  // one arrival a consumer warp
    }
    mbar_fence_init();
  }
  __syncthreads();

  auto x_tile = [&](int s) { return smem + s * TL::kStage; };
  auto a_tile = [&](int s) { return smem + s * TL::kStage + TL::kX; };
  auto s_tile = [&](int s) { return smem + s * TL::kStage + TL::kX + TL::kA; };

  if (wg == 0) {
    // =========================== producer ===========================
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      const uint32_t bytes = (uint32_t)(TL::kX + kStrips * (kTileBytes + SBT));
      auto weights = [&](int it) {
        const int s = it % S;
        mbar_arrive_expect_tx(&full[s], bytes);
        tma_load_3d(a_tile(s), &qmap, 0, kt0 + it, sb, &full[s]);  // strips past N: zeros
        tma_load_3d(s_tile(s), &smap, 0, kt0 + it, sb, &full[s]);
      };
      // the weights of the first stages do not depend on the previous kernel: issue them, and
      // the x_hat tiles only after griddepcontrol.wait
      const int first = min(nk, S);
      for (int it = 0; it < first; ++it) weights(it);
      pdl_wait();  // x_hat is the previous kernel's output
      for (int it = 0; it < first; ++it) tma_load_2d(x_tile(it), &xmap, 64 * (kt0 + it), m0, &full[it]);
      for (int it = first; it < nk; ++it) {
        mbar_wait(&empty[it % S], ((it / S) - 1) & 1);
        weights(it);
        tma_load_2d(x_tile(it % S), &xmap, 64 * (kt0 + it), m0, &full[it % S]);
      }
    }
    setmaxnreg_inc<kLaunchRegs>();
  } else {
    // =========================== consumers ===========================
    setmaxnreg_inc<kConsumerRegs>();
    const int c = wg - 1;
    const int warp = (threadIdx.x >> 5) & 3;
    const int sl = c * 4 + warp;  // the warp's strip in the CTA
    const int g = lane >> 2, q = lane & 3;
    float acc[TOK / 2];
#pragma unroll
    for (int i = 0; i < TOK / 2; ++i) acc[i] = 0.0f;
    fence_acc(acc);
    // A double-buffered in registers (stage i+1 decoded while stage i's wgmmas run) where the
    // accumulator leaves room: TOK <= 128. TOK = 256 (128 accumulator registers) waits for each
    // stage's wgmmas (wait_group 0) and overlaps through the other consumer warpgroup instead.
    constexpr bool kDoubleA = TOK <= 128;
    uint32_t a0[4][4], a1[4][4];
    auto stage = [&](int it, uint32_t (&a)[4][4]) {
      const int s = it % S;
      mbar_wait(&full[s], (it / S) & 1);
      const uint4 qv = *reinterpret_cast<const uint4*>(a_tile(s) + sl * kTileBytes + lane * 16);
      const TileScales scl = load_tile_scales(s_tile(s) + sl * SBT, wblock, g);
      const uint32_t w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t sg, sg8;
        step_scales<T>(scl, wblock, j, sg, sg8);
        a_fragment<T>(w[j], sg, sg8, a[j]);
      }
      const uint32_t xb = smem_u32(x_tile(s));
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j) WgmmaRS<T, TOK>::mma(acc, a[j], b_desc_sw128(xb + 32 * j));
      wgmma_commit();
      if constexpr (kDoubleA) {
        wgmma_wait<1>();  // the previous stage's wgmmas are done: its A registers and smem are free
        if (it > 0 && lane == 0) mbar_arrive(&empty[(it - 1) % S]);
      } else {
        wgmma_wait<0>();
        if (lane == 0) mbar_arrive(&empty[s]);
      }
    };
    int it = 0;
    if constexpr (kDoubleA) {
      for (; it + 1 < nk; it += 2) {
        stage(it, a0);
        stage(it + 1, a1);
      }
    }
    for (; it < nk; ++it) stage(it, a0);
    wgmma_wait<0>();
    fence_acc(acc);
    // every consumer is past its last stage: the ring becomes the FP32 output tile
    named_sync(1, kConsumerWGs * kWgThreads);
    float* P = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < TOK / 8; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = 64 * c + 16 * warp + g + 8 * h;  // weight row in the CTA
          const int col = 8 * i + 2 * q + e;             // token in the tile
          P[col * TL::kPitch + r] = acc[4 * i + 2 * h + e];
        }
    setmaxnreg_dec<kLaunchRegs>();
  }

  // ======================= split-K reduction + epilogue (all threads) =======================
  __syncthreads();
  if (cl > 1) cluster_sync();
  const float ts = __fmul_rn(tscale[0], kDequantRescale);
  const float* P = reinterpret_cast<const float*>(smem);
  const int n0 = sb * 16;
  constexpr int kGroups = kRows / 4;  // 4-float groups a token row
  for (int e = threadIdx.x; e < TOK * kGroups; e += kThreads) {
    const int ml = e / kGroups, n4 = e % kGroups;
    if (ml % cl != rank) continue;  // ranks split the tile's tokens
    const int m = m0 + ml;
    if (m >= M) continue;
    float4 v;
    if (cl == 1) {
      v = *reinterpret_cast<const float4*>(P + ml * TL::kPitch + 4 * n4);
    } else {
      v = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int r = 0; r < cl; ++r) {
        const float4 p = ld_dsmem_f4(dsmem_addr(P + ml * TL::kPitch + 4 * n4, (uint32_t)r));
        v.x += p.x; v.y += p.y; v.z += p.z; v.w += p.w;
      }
    }
    const float vv[4] = {v.x, v.y, v.z, v.w};
    const int n = n0 + 4 * n4;
    T* yr = y + (int64_t)m * ys;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (n + i < n_valid) {
        float o = __fmul_rn(vv[i], ts);
        if (bias != nullptr) o = __fadd_rn(o, Elem<T>::to_float(bias[n + i]));
        yr[n + i] = Elem<T>::from_float(o);
      }
    }
  }
  if (cl > 1) cluster_sync();  // no CTA leaves while a peer may still read its tile
}

struct WgmmaPlan {
  int tok, cl, kts, blocks, ttiles;
};

// Token tile: the smallest of 32/64/128/256 holding M (above 256: 256, or 128 when that wastes
// less padding); split-K clusters while the tiles fill less than half of the SMs.
WgmmaPlan wgmma_plan(int M, int nstrips, int KT, int sms, int force_tok, int force_cl) {
  WgmmaPlan p;
  p.tok = M <= 32 ? 32 : M <= 64 ? 64 : M <= 128 ? 128 : 256;
  if (M > 256 && (M % 256) != 0 && (M % 256) <= 128) p.tok = 128;
  if (force_tok) p.tok = force_tok;
  p.blocks = (nstrips + kStrips - 1) / kStrips;
  p.ttiles = (M + p.tok - 1) / p.tok;
  p.cl = 1;
  while (p.cl < 8 && (long)p.blocks * p.ttiles * p.cl * 2 <= sms && KT >= p.cl * 2 * 4) p.cl *= 2;
  if (force_cl) p.cl = force_cl;
  p.kts = (KT + p.cl - 1) / p.cl;
  return p;
}

// x_hat [M, K] (row stride xs elements) as a 2-D tensor map: boxes of 64 k x TOK rows, 128-byte
// swizzle (bank-conflict-free wgmma reads), rows past M zero-filled. Maps are encoded on the host
// at every launch (~1 us each; a map is a kernel parameter, so a CUDA graph records it by value).
cudaError_t x_tensor_map(CUtensorMap* map, const void* x, int64_t xs, int M, int K, int tok, int dtype) {
  const cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)M};
  const cuuint64_t strides[1] = {(cuuint64_t)xs * 2};
  const cuuint32_t box[2] = {64, (cuuint32_t)tok};
  return tma_map(map, dtype == kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, x,
                 dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
}

template <typename T, int TOK>
cudaError_t launch_wgmma_t(const WgmmaPlan& p, const void* x, int64_t xs, const void* qw,
                           const void* sc, const float* ts, const void* bias, void* y, int64_t ys,
                           int M, int N, int n_valid, int K, int wblock, int dtype, cudaStream_t stream) {
  using TL = Tile<TOK>;
  static int configured = 0;
  if (!configured) {
    cudaError_t e = cudaFuncSetAttribute(gemm_wgmma_kernel<T, TOK>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, TL::kSmem);
    if (e != cudaSuccess) return e;
    configured = 1;
  }
  CUtensorMap xmap, qmap, smap;
  cudaError_t me = x_tensor_map(&xmap, x, xs, M, K, TOK, dtype);
  if (me == cudaSuccess) me = tile_map(&qmap, qw, N / 16, K / 64, kTileBytes, 1, kStrips);
  if (me == cudaSuccess) me = tile_map(&smap, sc, N / 16, K / 64, tile_scale_bytes(wblock), 1, kStrips);
  if (me != cudaSuccess) return me;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)(p.blocks * p.cl), (unsigned)p.ttiles);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = TL::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = p.cl;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 2;
  return cudaLaunchKernelEx(&cfg, gemm_wgmma_kernel<T, TOK>, xmap, qmap, smap, ts, static_cast<const T*>(bias),
                            static_cast<T*>(y), ys, M, N / 16, n_valid, K, wblock, p.cl, p.kts);
}

template <typename T>
cudaError_t launch_wgmma_dt(const WgmmaPlan& p, const void* x, int64_t xs, const void* qw,
                            const void* sc, const float* ts, const void* bias, void* y, int64_t ys,
                            int M, int N, int n_valid, int K, int wblock, int dtype, cudaStream_t stream) {
  switch (p.tok) {
    case 32: return launch_wgmma_t<T, 32>(p, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, dtype, stream);
    case 64: return launch_wgmma_t<T, 64>(p, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, dtype, stream);
    case 128: return launch_wgmma_t<T, 128>(p, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, dtype, stream);
    case 256: return launch_wgmma_t<T, 256>(p, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, dtype, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_gemm_wgmma(const void* x, int64_t x_stride, const void* qweight,
                              const void* scales, const float* tensor_scale, const void* bias,
                              void* y, int64_t y_stride, int M, int N, int n_valid, int K,
                              int wblock, int dtype, cudaStream_t stream, int force_tok,
                              int force_cl) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(x) | (uintptr_t)(x_stride * 2)) % 16) return cudaErrorInvalidValue;
  if (force_tok && force_tok != 32 && force_tok != 64 && force_tok != 128 && force_tok != 256)
    return cudaErrorInvalidValue;
  if (force_cl && (force_cl > 8 || (force_cl & (force_cl - 1)))) return cudaErrorInvalidValue;
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
  const WgmmaPlan p = wgmma_plan(M, N / 16, K / 64, sms, force_tok, force_cl);
  switch (dtype) {
    case kBF16: return launch_wgmma_dt<__nv_bfloat16>(p, x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, dtype, stream);
    case kFP16: return launch_wgmma_dt<__half>(p, x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, dtype, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
