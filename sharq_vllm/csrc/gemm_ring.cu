// gemm_ring.cu: the SharQ decode GEMM (M <= 32) with the weights streamed through a shared-
// memory ring by the copy engine: y = x_hat @ deQ(W)^T * tensor_scale + bias.
//
// Why: the register-streaming kernel (gemm.cu, gemm_stream_kernel) keeps at most one step of
// weight loads a warp in flight, and issuing them is tied to the warp's progress through its
// decode work: on an H200 it reads the FP4 bytes at ~37% of the copy bandwidth (ncu: 39% DRAM
// throughput, 0.93 eligible warps a scheduler). Here one producer thread a CTA keeps S stages of
// weights in flight with bulk copies (cp.async.bulk: two instructions a stage, no registers),
// starting before the preparation kernel has finished (programmatic dependent launch: the
// weights do not depend on it), and the 8 consumer warps only decode and multiply.
//
// Work split (the stream kernel's, so the bits are the same): a persistent CTA takes strips
// blockIdx.x, + gridDim.x, ... (16 weight rows each); a strip's k-tiles are cut into stages of
// TS tiles (contiguous in the tiled layout: TS * 512 code bytes, TS * 32|64 scale bytes); in a
// stage, warp w takes the tiles w, w + 8, ..., U at a time, reading its 16 code bytes and scale
// pair of a tile from shared memory and x_hat from global memory (L1/L2), exactly the tile order
// of gemm_stream_kernel (warp w: tiles w, w + 8, w + 16, ... of the strip). At the end of a strip
// the 8 warps' partial sums are reduced in shared memory in warp order (tile::store_strip).
// Synchronisation: full[s] (1 producer arrival + the stage's bytes) and empty[s] (8 consumer
// warps) mbarriers a slot; the consumers' strip epilogue uses named barrier 1 (256 threads), so
// the producer warp may finish early.
// Configurations (launch_ring_mt): (U, TS, S); shared memory S * TS * 576 bytes (+ the reduction
// buffer), two or three CTAs an SM; measured by benchmarks/kernels/bench_kernels.py --gemm-sweep.
#include "gemm_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"

#include <algorithm>

namespace sharq {
namespace {

using tile::kWarps;
constexpr int kThreads = (kWarps + 1) * 32;  // 8 consumer warps + 1 producer warp
constexpr int kTileCodeBytes = 512;          // 16 rows x 64 k x 4 bits
constexpr int kTileScaleBytesMax = 64;       // 16 rows x 4 blocks of 16 (32 with 32-blocks)
constexpr int kMaxDevices = 64;

template <int TS, int S>
constexpr int ring_smem_bytes() {
  return S * TS * (kTileCodeBytes + kTileScaleBytesMax) + 2 * S * 8;
}

// CTAs an SM the configuration aims at (shared memory allowing): registers capped to fit them
template <int TS, int S>
constexpr int ring_min_blocks() {
  return ring_smem_bytes<TS, S>() <= 60 * 1024 ? 3 : 2;
}

template <typename T, int MT, int U, int TS, int S>
__global__ void __launch_bounds__(kThreads, ring_min_blocks<TS, S>())
gemm_ring_kernel(const T* __restrict__ x, int64_t xs, const uint8_t* __restrict__ qw,
                 const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                 const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int K,
                 int wblock, int nstrips) {
  static_assert(TS % (kWarps * U) == 0, "a stage is whole sub-steps of 8 warps x U tiles");
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ float red[kWarps][MT][4][32];
  uint8_t* codes = smem;                                                 // [S][TS * 512]
  uint8_t* scl = smem + S * TS * kTileCodeBytes;                         // [S][TS * 64]
  uint64_t* full = reinterpret_cast<uint64_t*>(scl + S * TS * kTileScaleBytesMax);
  uint64_t* empty = full + S;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int KT = K >> 6;
  const int SBT = wblock == 32 ? 32 : 64;
  const int spt = (KT + TS - 1) / TS;  // stages a strip
  const int my_strips = nstrips > (int)blockIdx.x ? (nstrips - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
  const int total = my_strips * spt;

  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      async::mbar_init(&full[s], 1);
      async::mbar_init(&empty[s], kWarps);
    }
    async::mbar_fence_init();
  }
  __syncthreads();

  if (warp == kWarps) {  // producer: one thread issues every copy
    if (lane == 0) {
      int slot = 0, phase = 0, strip = (int)blockIdx.x, st = 0;  // ring position, stage position
      for (int i = 0; i < total; ++i) {
        if (i >= S) async::mbar_wait(&empty[slot], phase ^ 1);
        const int t0 = st * TS;
        const int nt = min(TS, KT - t0);
        const int64_t first = (int64_t)strip * KT + t0;  // the stage's first tile
        async::mbar_arrive_expect_tx(&full[slot], (uint32_t)(nt * (kTileCodeBytes + SBT)));
        async::bulk_g2s(codes + slot * TS * kTileCodeBytes, qw + first * kTileCodeBytes,
                        (uint32_t)(nt * kTileCodeBytes), &full[slot]);
        async::bulk_g2s(scl + slot * TS * kTileScaleBytesMax, sc + first * SBT, (uint32_t)(nt * SBT),
                        &full[slot]);
        if (++slot == S) {
          slot = 0;
          phase ^= 1;
        }
        if (++st == spt) {
          st = 0;
          strip += (int)gridDim.x;
        }
      }
    }
    return;
  }

  // consumers
  const int g = lane >> 2, q = lane & 3;
  const int m_base = blockIdx.y * 8 * MT;
  const int soff = (wblock == 32 ? (q >> 1) : q) * 16 + 2 * g;
  const float ts = __fmul_rn(tscale[0], 128.0f);
  const T* xrow[MT];
  bool mrow[MT];
  tile::x_rows<T, MT>(xrow, mrow, x, xs, m_base, M, g, q);
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0.0f;

  async::pdl_wait();  // x_hat is the preceding kernel's output
  int slot = 0, phase = 0, strip = (int)blockIdx.x, st = 0;  // ring position, stage position
  for (int i = 0; i < total; ++i) {
    const int t0 = st * TS;
    const uint8_t* cs = codes + slot * TS * kTileCodeBytes + lane * 16;
    const uint8_t* ss = scl + slot * TS * kTileScaleBytesMax + soff;
    async::mbar_wait(&full[slot], phase);
#pragma unroll
    for (int r = 0; r < TS / (kWarps * U); ++r) {
      uint4 qv[U];
      uint32_t sv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int lt = warp + kWarps * (r * U + u);
        if (t0 + lt < KT) {
          qv[u] = *reinterpret_cast<const uint4*>(cs + lt * kTileCodeBytes);
          sv[u] = *reinterpret_cast<const uint16_t*>(ss + lt * SBT);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int t = t0 + warp + kWarps * (r * U + u);
        if (t < KT) {
          uint4 xv[MT][2];
          tile::load_x<T, MT>(xv, xrow, mrow, t);
          tile::mma_tile<T, MT>(acc, qv[u], sv[u], xv);
        }
      }
    }
    __syncwarp();
    if (lane == 0) async::mbar_arrive(&empty[slot]);  // the slot's bytes are in registers, used

    if (st == spt - 1) {  // the strip's last stage: fixed-order reduction, epilogue
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          red[warp][mt][c][lane] = acc[mt][c];
          acc[mt][c] = 0.0f;
        }
      async::named_sync(1, kWarps * 32);
      tile::store_strip<T, MT>(red, strip, m_base, M, n_valid, ts, bias, y, ys, threadIdx.x, kWarps * 32);
      async::named_sync(1, kWarps * 32);
    }
    if (++slot == S) {
      slot = 0;
      phase ^= 1;
    }
    if (++st == spt) {
      st = 0;
      strip += (int)gridDim.x;
    }
  }
}

template <typename T, int MT, int U, int TS, int S>
cudaError_t launch_ring_t(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                          const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                          cudaStream_t stream) {
  constexpr int smem = ring_smem_bytes<TS, S>();
  auto kern = gemm_ring_kernel<T, MT, U, TS, S>;
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  // the shared-memory opt-in is a per-device attribute of the function: set once per device
  static int per_sm[kMaxDevices] = {};
  if (per_sm[dev] == 0) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    int v = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kern, kThreads, smem);
    if (e != cudaSuccess) return e;
    per_sm[dev] = std::max(1, v);
  }
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
  const int nstrips = N / 16;
  const int mtiles = (M + 8 * MT - 1) / (8 * MT);
  // balanced persistent grid (as the stream kernel): every CTA gets the same number of strips
  const int slots = std::max(1, sms * per_sm[dev] / mtiles);
  const int per_cta = (nstrips + slots - 1) / slots;
  const int gx = std::max(1, (nstrips + per_cta - 1) / per_cta);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(gx, mtiles);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), xs, static_cast<const uint8_t*>(qw),
                            static_cast<const uint8_t*>(sc), ts, static_cast<const T*>(bias), static_cast<T*>(y),
                            ys, M, n_valid, K, wblock, nstrips);
}

// (U tiles a sub-step, TS tiles a stage, S stages) of configuration cfg; 8-row groups MT from M.
template <typename T, int MT>
cudaError_t launch_ring_mt(int cfg, const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                           const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                           cudaStream_t stream) {
  constexpr int U4 = MT >= 4 ? 2 : 4;  // x fragments in registers: at most 2 tiles at MT = 4
  switch (cfg) {
    case 0: return launch_ring_t<T, MT, U4, 32, 4>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
    case 1: return launch_ring_t<T, MT, U4, 32, 5>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
    case 2: return launch_ring_t<T, MT, U4, 32, 2>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
    case 3: return launch_ring_t<T, MT, 2, 16, 4>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
    case 4: return launch_ring_t<T, MT, U4, 64, 2>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_ring_dt(int cfg, const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                           const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                           cudaStream_t stream) {
  if (M <= 8) return launch_ring_mt<T, 1>(cfg, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 16) return launch_ring_mt<T, 2>(cfg, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_ring_mt<T, 4>(cfg, x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
}

}  // namespace

cudaError_t launch_gemm_ring(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                             const float* tensor_scale, const void* bias, void* y, int64_t y_stride, int M,
                             int N, int n_valid, int K, int wblock, int dtype, int cfg, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > kRingMaxM || N % 16 || K % 64 || (wblock != 16 && wblock != 32) || cfg < 0 || cfg >= kRingConfigs)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16: return launch_ring_dt<__nv_bfloat16>(cfg, x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
    case kFP16: return launch_ring_dt<__half>(cfg, x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
