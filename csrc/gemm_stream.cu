// gemm_stream.cu: the register-streaming GEMM for decode batches (M <= 16 rows):
// y = x_hat @ deQ(W)^T * tensor_scale + bias.
//
// A persistent grid (the resident CTAs; CTA b takes strips b, b + grid, ..., so every CTA gets the
// same number of 16-row strips); each of the 8 warps of a CTA walks one flat sequence of steps
// (U k-tiles of a strip a step, its tiles w, w + 8, ...; strips back to back) and issues step
// i+1's weight loads (16 B of codes + the scale codes a lane a tile, ld.global.nc, no L1
// allocation) before computing step i: a register double buffer keeps up to 2*U*16 B a lane in
// flight, across strip boundaries too, with no shared-memory ring and no barrier on the stream.
// x_hat is read at compute time from L1/L2 (the rows are tiny and shared by every CTA), the
// B fragments in natural k order (fp4_tile.cuh). After a strip's last step the 8 warps' partial
// sums are reduced in shared memory in a fixed order (deterministic, no atomics, no workspace),
// scaled by tensor_scale * 2^8, biased, rounded once.
// Launched with programmatic dependent launch: the first weight loads are issued before
// griddepcontrol.wait, i.e. while the preparation kernel still runs.
#include "fp4_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"

#include <algorithm>

namespace sharq {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

template <int U>
struct StreamStage {
  uint4 q[U];
  TileScales s[U];
};

template <typename T, int MT, int U>
__global__ void __launch_bounds__(kWarps * 32)
gemm_stream_kernel(const T* __restrict__ x, int64_t xs, const uint8_t* __restrict__ qw,
                   const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                   const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid,
                   int K, int wblock, int nstrips) {
  __shared__ float red[kWarps][MT][4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const int KT = K >> 6;
  const int SBT = tile_scale_bytes(wblock);
  const int nsteps = (KT + kWarps * U - 1) / (kWarps * U);  // steps a strip (same for all warps)
  const int my_strips =
      nstrips > (int)blockIdx.x ? (nstrips - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
  const int total = my_strips * nsteps;

  // B fragment of step j, token row 8 mt + g: x[m][64 t + 16 j + 2 q .. +1], [.. + 8 ..]
  const uint32_t* xrow[MT];
  bool mrow[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = 8 * mt + g;
    mrow[mt] = m < M;
    xrow[mt] = reinterpret_cast<const uint32_t*>(x + (int64_t)(mrow[mt] ? m : 0) * xs + 2 * q);
  }
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0.0f;

  // step i -> strip blockIdx.x + (i / nsteps) * gridDim.x, tiles warp + 8 (U (i % nsteps) + u)
  auto load = [&](StreamStage<U>& st, int i) {
    const int strip = (int)blockIdx.x + (i / nsteps) * (int)gridDim.x;
    const int tb = warp + kWarps * U * (i % nsteps);
    const uint4* qs = reinterpret_cast<const uint4*>(qw + (int64_t)strip * KT * kTileBytes) + lane;
    const uint8_t* ss = sc + (int64_t)strip * KT * SBT;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = tb + kWarps * u;
      if (t < KT) {
        st.q[u] = ld_stream(qs + (int64_t)t * (kTileBytes / 16));
        st.s[u] = load_tile_scales(ss + (int64_t)t * SBT, wblock, g);
      }
    }
  };
  auto compute = [&](const StreamStage<U>& st, int i) {
    const int tb = warp + kWarps * U * (i % nsteps);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = tb + kWarps * u;
      if (t < KT) {
        uint32_t b[MT][8];  // per step j: b0 = words 2j, b1 = 2j + 1
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            b[mt][2 * j] = mrow[mt] ? __ldg(xrow[mt] + 32 * t + 8 * j) : 0u;
            b[mt][2 * j + 1] = mrow[mt] ? __ldg(xrow[mt] + 32 * t + 8 * j + 4) : 0u;
          }
        const uint32_t w[4] = {st.q[u].x, st.q[u].y, st.q[u].z, st.q[u].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t sg, sg8, a[4];
          step_scales<T>(st.s[u], wblock, j, sg, sg8);
          a_fragment<T>(w[j], sg, sg8, a);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) MmaT<T>::mma(acc[mt], a, b[mt][2 * j], b[mt][2 * j + 1]);
        }
      }
    }
  };
  const float ts = __fmul_rn(tscale[0], kDequantRescale);
  // after the last step of a strip: fixed-order reduction over the 8 warps, epilogue, store
  auto finish = [&](int i) {
    if (i % nsteps != nsteps - 1) return;
    const int strip = (int)blockIdx.x + (i / nsteps) * (int)gridDim.x;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        red[warp][mt][c][lane] = acc[mt][c];
        acc[mt][c] = 0.0f;
      }
    __syncthreads();
    for (int idx = threadIdx.x; idx < MT * 4 * 32; idx += kWarps * 32) {
      const int mt = idx >> 7, c = (idx >> 5) & 3, ln = idx & 31;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red[w][mt][c][ln];
      const int n = strip * 16 + (ln >> 2) + (c >= 2 ? 8 : 0);
      const int m = 8 * mt + 2 * (ln & 3) + (c & 1);
      if (m < M && n < n_valid) {
        float v = __fmul_rn(sum, ts);
        if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[n]));
        y[(int64_t)m * ys + n] = Elem<T>::from_float(v);
      }
    }
    __syncthreads();
  };

  StreamStage<U> A, B;
  if (total > 0) load(A, 0);
  pdl_wait();  // the weights above do not depend on the previous kernel; x_hat does
  for (int i = 0; i < total; i += 2) {
    if (i + 1 < total) load(B, i + 1);
    compute(A, i);
    finish(i);
    if (i + 1 >= total) break;
    if (i + 2 < total) load(A, i + 2);
    compute(B, i + 1);
    finish(i + 1);
  }
}

template <typename T, int MT, int U>
cudaError_t launch_stream_t(const void* x, int64_t xs, const void* qw, const void* sc,
                            const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                            int n_valid, int K, int wblock, cudaStream_t stream) {
  static int per_sm = 0;  // resident CTAs an SM (host query, once per instantiation)
  if (per_sm == 0) {
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemm_stream_kernel<T, MT, U>, kWarps * 32, 0) !=
            cudaSuccess ||
        v < 1)
      v = 1;
    per_sm = v;
  }
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
  const int nstrips = N / 16;
  // balanced persistent grid: every CTA gets the same number of strips
  const int slots = std::max(1, sms * per_sm);
  const int per_cta = (nstrips + slots - 1) / slots;
  const int gx = std::max(1, (nstrips + per_cta - 1) / per_cta);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(gx);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, gemm_stream_kernel<T, MT, U>, static_cast<const T*>(x), xs,
                            static_cast<const uint8_t*>(qw), static_cast<const uint8_t*>(sc), ts,
                            static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid, K,
                            wblock, nstrips);
}

}  // namespace

cudaError_t launch_gemm_stream(const void* x, int64_t x_stride, const void* qweight,
                               const void* scales, const float* tensor_scale, const void* bias,
                               void* y, int64_t y_stride, int M, int N, int n_valid, int K,
                               int wblock, int dtype, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > 16 || N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(x) | (uintptr_t)(x_stride * 2)) % 4) return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16:
      return M <= 8 ? launch_stream_t<__nv_bfloat16, 1, 4>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream)
                    : launch_stream_t<__nv_bfloat16, 2, 4>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
    case kFP16:
      return M <= 8 ? launch_stream_t<__half, 1, 4>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream)
                    : launch_stream_t<__half, 2, 4>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
