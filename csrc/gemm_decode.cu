// gemm_decode.cu: the SharQ GEMM for decode batches (M <= 16 rows): y = x_hat @ deQ(W)^T * ts + b.
//
// At M <= 16 the GEMM is a stream of the FP4 weights (0.5625 B a weight) and the FP4 decode is
// the work (~100 instructions a 16x64 tile a warp): the kernel must keep each SM's share of the
// stream in flight AND keep enough independent decode work in flight to issue ~2.5 instructions a
// cycle. Work split:
//   * a CTA owns W strips (16 weight rows each, W = 4..16, one CONSUMER WARP a strip) and, within
//     a thread-block cluster of CL CTAs (split-K, CL = 1..8), the k-tiles [r*kts, (r+1)*kts) of
//     rank r; (W, CL) are chosen so that ~one CTA runs on every SM (decode_plan below);
//   * one PRODUCER warp streams stages of T k-tiles of all W strips into an S-stage shared ring
//     with two tensor copies a stage (TMA: one box of the W strips' codes, one of their scale
//     codes; a bulk copy a strip made the TMA unit's issue rate the limit; mbarriers full/empty)
//     from the first cycle - the weights do not depend on the previous
//     kernel, so under programmatic dependent launch they arrive while the preparation still
//     runs - then (after griddepcontrol.wait) copies the CTA's k-slice of x_hat (M rows) to
//     shared memory once;
//   * each consumer warp walks its strip's k-tiles: x fragments by ldmatrix (natural k order,
//     conflict-free pitch), weights decoded in registers (fp4_tile.cuh), mma.sync m16n8k16, two
//     tiles at a time into two accumulators (independent MMA chains);
//   * epilogue: the CTA's partial sums (W strips x 16 rows x 8*MT columns) stay in shared memory;
//     after a cluster barrier rank r finishes the strips w = r (mod CL), summing the CL ranks'
//     partials through distributed shared memory in RANK ORDER, scaling by tensor_scale * 2^8,
//     adding the bias, rounding once. Deterministic: no atomics, no workspace, fixed order; the
//     split depends on N, K, M <= 8 | <= 16 and the SM count only, never on the data.
#include "fp4_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"

#include <algorithm>
#include <type_traits>

namespace sharq {
namespace {

constexpr int kMaxWarps = 16;                      // consumer warps (strips) a CTA, at most
constexpr int kMaxThreads = (kMaxWarps + 1) * 32;  // + 1 producer warp
constexpr int kMaxStages = 12;
constexpr int kSmemLimit = 227 * 1024;

struct DecodePlan {
  int w = 1;       // strips (consumer warps) a CTA
  int cl = 1;      // CTAs a cluster (k-split)
  int groups = 1;  // clusters
  int kts = 1;     // k-tiles a rank
  int t = 2;       // k-tiles a stage
  int stages = 2;
  int smem = 0;    // dynamic shared memory bytes
};

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int x_pitch(int kts) { return kts * 128 + 16; }  // +16 B: conflict-free
__host__ __device__ inline int round_up(int a, int b) { return (a + b - 1) / b * b; }

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// One 16x64 tile into acc: codes (the lane's 16 bytes), scale codes, x fragments at xaddr[mt].
template <typename T, int MT>
__device__ __forceinline__ void tile_mma(float (&acc)[MT][4], uint4 codes, const TileScales& sc,
                                         int wblock, const uint32_t (&xaddr)[MT]) {
  uint32_t b[MT][8];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    uint32_t lo[4], hi[4];
    ldmatrix_x4(xaddr[mt], lo);       // steps 0, 1: {b0, b1} each
    ldmatrix_x4(xaddr[mt] + 64, hi);  // steps 2, 3
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      b[mt][i] = lo[i];
      b[mt][4 + i] = hi[i];
    }
  }
  const uint32_t w[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t sg, sg8, a[4];
    step_scales<T>(sc, wblock, j, sg, sg8);
    a_fragment<T>(w[j], sg, sg8, a);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) MmaT<T>::mma(acc[mt], a, b[mt][2 * j], b[mt][2 * j + 1]);
  }
}

template <typename T, int MT>
__global__ void __launch_bounds__(kMaxThreads, 1)
gemm_decode_kernel(const T* __restrict__ x, int64_t xs, const __grid_constant__ CUtensorMap qmap,
                   const __grid_constant__ CUtensorMap smap, const float* __restrict__ tscale,
                   const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int nstrips,
                   int n_valid, int K, int wblock, int cl, int kts, int tps, int stages) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((128 - (smem_u32(smem_raw) & 127)) & 127);  // TMA: 128-B aligned
  const int W = (int)blockDim.x / 32 - 1;
  const int KT = K >> 6;
  const int SBT = tile_scale_bytes(wblock);
  const int rank = (int)cluster_rank();
  const int s0 = ((int)blockIdx.x / cl) * W;
  const int ns = max(0, min(W, nstrips - s0));
  const int k0 = min(rank * kts, KT), k1 = min(k0 + kts, KT);
  const int nst = ceil_div(k1 - k0, tps);  // stages of this CTA
  const int pitch = x_pitch(kts);
  constexpr int kSlot = MT * 4 * 32;  // floats of one strip's partial sums

  // shared memory: [ring: stages x (codes | scale codes)][x slice: M rows][partials: W slots][bars]
  const int codes_bytes = W * tps * kTileBytes;
  const int stage_bytes = codes_bytes + round_up(W * tps * SBT, 128);
  uint8_t* ring = smem;
  uint8_t* xsm = ring + stages * stage_bytes;
  float* red = reinterpret_cast<float*>(xsm + M * pitch);
  uint64_t* full = reinterpret_cast<uint64_t*>(red + W * kSlot);
  uint64_t* empty = full + stages;
  uint64_t* xbar = empty + stages;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], max(ns, 1));
    }
    mbar_init(xbar, 1);
    mbar_fence_init();
  }
  __syncthreads();

  if (warp == W) {
    // ---------------- producer ----------------
    if (lane == 0) {
      const uint32_t bytes = (uint32_t)(W * tps * (kTileBytes + SBT));  // whole boxes (zeros past N, K)
      auto issue = [&](int st) {
        const int s = st % stages;
        if (st >= stages) mbar_wait(&empty[s], ((st / stages) - 1) & 1);
        uint8_t* dst = ring + s * stage_bytes;
        mbar_arrive_expect_tx(&full[s], bytes);
        tma_load_3d(dst, &qmap, 0, k0 + st * tps, s0, &full[s]);
        tma_load_3d(dst + codes_bytes, &smap, 0, k0 + st * tps, s0, &full[s]);
      };
      const int first = min(nst, stages);
      for (int st = 0; st < first; ++st) issue(st);  // weights: independent of the previous kernel
      pdl_wait();  // x_hat is the previous kernel's output
      if (nst > 0 && ns > 0) {
        const uint32_t row_bytes = (uint32_t)(k1 - k0) * 128u;
        mbar_arrive_expect_tx(xbar, row_bytes * (uint32_t)M);
        for (int m = 0; m < M; ++m)
          bulk_g2s(xsm + m * pitch, x + (int64_t)m * xs + (int64_t)k0 * 64, row_bytes, xbar);
      }
      for (int st = first; st < nst; ++st) issue(st);
    }
  } else if (warp < ns) {
    // ---------------- consumers: warp w = strip s0 + w ----------------
    const int g = lane >> 2;
    float acc0[MT][4], acc1[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc0[mt][i] = acc1[mt][i] = 0.0f;
    // ldmatrix row addresses: lane L feeds row L%8 of matrix L/8 (matrices at 16-byte steps);
    // rows >= M read row M-1 again - they only feed accumulator columns >= M, never stored
    uint32_t xrow[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      xrow[mt] = smem_u32(xsm + min(8 * mt + (lane & 7), M - 1) * pitch + (lane >> 3) * 16);
    if (nst > 0) mbar_wait(xbar, 0);
    for (int st = 0; st < nst; ++st) {
      const int s = st % stages;
      mbar_wait(&full[s], (st / stages) & 1);
      const int nt = min(tps, k1 - (k0 + st * tps));
      const uint8_t* cq = ring + s * stage_bytes + warp * tps * kTileBytes + lane * 16;
      const uint8_t* cs = ring + s * stage_bytes + codes_bytes + warp * tps * SBT;
      const int tl0 = st * tps;  // first tile of the stage, relative to k0
      int tt = 0;
      for (; tt + 1 < nt; tt += 2) {  // two tiles, two accumulators: independent MMA chains
        const uint4 qa = *reinterpret_cast<const uint4*>(cq + tt * kTileBytes);
        const uint4 qb = *reinterpret_cast<const uint4*>(cq + (tt + 1) * kTileBytes);
        const TileScales sa = load_tile_scales(cs + tt * SBT, wblock, g);
        const TileScales sb = load_tile_scales(cs + (tt + 1) * SBT, wblock, g);
        uint32_t xa[MT], xb[MT];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          xa[mt] = xrow[mt] + (uint32_t)((tl0 + tt) * 128);
          xb[mt] = xa[mt] + 128u;
        }
        tile_mma<T, MT>(acc0, qa, sa, wblock, xa);
        tile_mma<T, MT>(acc1, qb, sb, wblock, xb);
      }
      if (tt < nt) {
        const uint4 qa = *reinterpret_cast<const uint4*>(cq + tt * kTileBytes);
        const TileScales sa = load_tile_scales(cs + tt * SBT, wblock, g);
        uint32_t xa[MT];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) xa[mt] = xrow[mt] + (uint32_t)((tl0 + tt) * 128);
        tile_mma<T, MT>(acc0, qa, sa, wblock, xa);
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);  // every lane's reads of stage s are done
    }
    float* slot = red + warp * kSlot;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) slot[(mt * 4 + i) * 32 + lane] = acc0[mt][i] + acc1[mt][i];
  }

  // ---------------- fixed-order split-K reduction + epilogue ----------------
  __syncwarp();    // the producer warp reconverges (cluster barriers are warp-aligned)
  cluster_sync();  // every rank's partials are written (release / acquire, cluster scope)
  const float ts = __fmul_rn(tscale[0], kDequantRescale);
  const int owned = ns > rank ? ceil_div(ns - rank, cl) : 0;
  for (int e = threadIdx.x; e < owned * kSlot; e += blockDim.x) {
    const int w = rank + (e / kSlot) * cl;
    const int idx = e % kSlot;
    float sum = 0.0f;
    for (int r = 0; r < cl; ++r) {
      if (min(r * kts, KT) >= KT) break;  // ranks past the end of K hold no partials
      sum += ld_dsmem_f32(dsmem_addr(red + w * kSlot + idx, (uint32_t)r));
    }
    const int mt = idx >> 7, i = (idx >> 5) & 3, ln = idx & 31;
    const int n = (s0 + w) * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
    const int m = 8 * mt + 2 * (ln & 3) + (i & 1);
    if (m < M && n < n_valid) {
      float v = __fmul_rn(sum, ts);
      if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[n]));
      y[(int64_t)m * ys + n] = Elem<T>::from_float(v);
    }
  }
  cluster_sync();  // no CTA leaves while a peer may still read its partials
}

int stage_bytes(int w, int t, int sbt) { return w * t * kTileBytes + round_up(w * t * sbt, 128); }
int smem_bytes(int m, int mt, int w, int kts, int t, int sbt, int stages) {
  return 128 + stages * stage_bytes(w, t, sbt) + m * x_pitch(kts) + w * mt * 4 * 32 * 4 + (2 * stages + 1) * 8;
}

// Split: strips a CTA (W consumer warps) and cluster size CL such that ~one CTA an SM runs
// (groups * CL <= SMs) and the per-SM critical path is shortest: W * kts tiles at an issue rate
// that grows with the warps up to ~12 (measured; fewer warps leave the schedulers idle). Then
// tiles a stage (T) and stages: as deep a ring as shared memory allows (>= 3 stages).
DecodePlan decode_plan(int m, int mt, int nstrips, int KT, int sbt, int sms, int force_w, int force_cl) {
  DecodePlan best;
  double best_cost = -1;
  for (int w = 4; w <= kMaxWarps; ++w) {
    if (force_w && w != force_w) continue;
    const int groups = ceil_div(nstrips, w);
    for (int cl = 1; cl <= 8; ++cl) {
      if (force_cl && cl != force_cl) continue;
      if (!force_cl && groups * cl > sms) break;
      const int kts = ceil_div(KT, cl);
      if (cl > 1 && (cl - 1) * kts >= KT) continue;  // a rank would hold no k-tiles
      for (int t = 4; t >= 1; t /= 2) {
        const int fixed = smem_bytes(m, mt, w, kts, t, sbt, 0);
        const int stages = std::min(kMaxStages, (kSmemLimit - fixed) / stage_bytes(w, t, sbt));
        if (stages < 3) continue;
        const double cost = (double)w * kts / std::min(w, 12) + 0.5 * cl + (t == 1 ? 1.0 : 0.0);
        if (best_cost < 0 || cost < best_cost - 1e-9) {
          best_cost = cost;
          best = DecodePlan{w, cl, groups, kts, t, stages, smem_bytes(m, mt, w, kts, t, sbt, stages)};
        }
        break;  // the largest stage that fits
      }
    }
  }
  if (best_cost < 0 && !force_w && !force_cl) {
    // more strips than 16 x SMs: several waves of 16-strip CTAs, no split
    const int kts = KT;
    for (int t = 4; t >= 1; t /= 2) {
      const int fixed = smem_bytes(m, mt, kMaxWarps, kts, t, sbt, 0);
      const int stages = std::min(kMaxStages, (kSmemLimit - fixed) / stage_bytes(kMaxWarps, t, sbt));
      if (stages < 3) continue;
      return DecodePlan{kMaxWarps, 1, ceil_div(nstrips, kMaxWarps), kts, t, stages,
                        smem_bytes(m, mt, kMaxWarps, kts, t, sbt, stages)};
    }
  }
  return best;
}

template <typename T, int MT>
cudaError_t launch_decode_t(const void* x, int64_t xs, const void* qw, const void* sc,
                            const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                            int n_valid, int K, int wblock, cudaStream_t stream, int force_w,
                            int force_cl) {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
  const int nstrips = N / 16, KT = K / 64;
  const DecodePlan p = decode_plan(M, MT, nstrips, KT, tile_scale_bytes(wblock), sms, force_w, force_cl);
  if (p.smem <= 0) {
    if (force_w || force_cl) return cudaErrorInvalidValue;
    // no split fits shared memory (a very long K with 16 rows): the wgmma kernel takes any shape
    return launch_gemm_wgmma(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock,
                             std::is_same<T, __half>::value ? kFP16 : kBF16, stream);
  }
  CUtensorMap qmap, smap;
  cudaError_t me = tile_map(&qmap, qw, nstrips, KT, kTileBytes, p.t, p.w);
  if (me == cudaSuccess) me = tile_map(&smap, sc, nstrips, KT, tile_scale_bytes(wblock), p.t, p.w);
  if (me != cudaSuccess) return me;
  static int configured = 0;  // raise the dynamic shared memory limit once per instantiation
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(gemm_decode_kernel<T, MT>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemLimit);
    if (e != cudaSuccess) return e;
    configured = 1;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)(p.groups * p.cl));
  cfg.blockDim = dim3((unsigned)((p.w + 1) * 32));
  cfg.dynamicSmemBytes = (size_t)p.smem;
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
  return cudaLaunchKernelEx(&cfg, gemm_decode_kernel<T, MT>, static_cast<const T*>(x), xs, qmap, smap, ts,
                            static_cast<const T*>(bias), static_cast<T*>(y), ys, M, nstrips, n_valid,
                            K, wblock, p.cl, p.kts, p.t, p.stages);
}

}  // namespace

cudaError_t launch_gemm_decode(const void* x, int64_t x_stride, const void* qweight,
                               const void* scales, const float* tensor_scale, const void* bias,
                               void* y, int64_t y_stride, int M, int N, int n_valid, int K,
                               int wblock, int dtype, cudaStream_t stream, int force_w,
                               int force_cl) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > 16 || N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(x) | (uintptr_t)(x_stride * 2)) % 16) return cudaErrorInvalidValue;
  if (force_w < 0 || force_w > kMaxWarps || force_cl < 0 || force_cl > 8) return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16:
      return M <= 8 ? launch_decode_t<__nv_bfloat16, 1>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, force_w, force_cl)
                    : launch_decode_t<__nv_bfloat16, 2>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, force_w, force_cl);
    case kFP16:
      return M <= 8 ? launch_decode_t<__half, 1>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, force_w, force_cl)
                    : launch_decode_t<__half, 2>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, force_w, force_cl);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
