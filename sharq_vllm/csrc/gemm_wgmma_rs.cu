// gemm_wgmma_rs.cu: SharQ W4A16 GEMM for decode batches (M <= 64) on Hopper: warpgroup MMAs whose
// A operand is the decoded weights in registers and whose B operand is x_hat in shared memory.
// y = x_hat @ deQ(W)^T * tensor_scale + bias: the contract of gemm.cu (same tiled weights, same
// exact dequantization, FP32 accumulation); only the FP32 summation order differs from the
// mma.sync kernels.
//
// Why: in gemm.cu's stream kernel each 16 x 64 weight tile costs, besides its decode, 4 MMAs and 2
// x_hat loads per 8 tokens (16 and 8 at 32 tokens), issued by the same warps; and the wgmma
// kernels of gemm_wgmma.cu stage every decoded tile in shared memory and pad the tokens to 64.
// Here the warp decodes its tile straight into wgmma's register fragment for A (per warp of the
// warpgroup: its 16 rows, the layout of mma.sync m16n8k16's A fragment, so gemm_tile.cuh's decode
// is used as it is) and one wgmma.m64nNTk16 a k16 step multiplies 64 weight rows by the NT token
// columns (16 / 32 / 64: M rounded up) of x_hat, which sits in shared memory for the whole kernel.
//
// Tiling: weights are wgmma's M side: warpgroup = 64 rows (a "group" = 4 of gemm.cu's 16-row
// strips, warp w of the warpgroup owns strip 4 group + w), tokens its N side (NT). 4 warpgroups a
// CTA, 1 CTA an SM (512 threads, <= 128 registers). x_hat: the CTA's share of K, all NT rows,
// staged once after griddepcontrol.wait by all threads, permuted into the k order of the weight
// tiles (below) as wgmma's no-swizzle K-major layout; rows >= M are zeros. When that share does
// not fit (NT x K x 2 bytes > ~220 KB), a cluster of S = 2 / 4 / 8 CTAs splits K: rank r holds
// k-tiles [r KT / S, (r+1) KT / S) and, after each round of groups, the S partial 64 x NT tiles
// of a warpgroup are summed in rank order through distributed shared memory (deterministic, no
// workspace, no atomics). Groups are dealt round-robin: round i, cluster c, warpgroup w takes group
// i x slots + c x 4 + w (slots = clusters x 4); every warpgroup runs every round (an idle one loads
// nothing and multiplies zeros, and joins the barriers).
//
// Main loop (a warp): a register double buffer of U = 4 k-tiles (16 code bytes + a scale pair a
// lane a tile, as the stream kernel loads them; the first stage is requested before
// griddepcontrol.wait, so it overlaps the preparation kernel); per k-tile: decode into one of two
// A fragment sets (4 k16 steps x 4 registers), wgmma.fence, 4 x wgmma (accumulating into NT / 2
// FP32 registers), commit, wait until at most one group is pending (so the other fragment set is
// free for the next tile's decode while this tile's MMAs run on the tensor cores). No tile's
// fence / MMAs / commit / wait is skipped by a data-dependent branch (ptxas would serialize every
// wgmma: its C7518 note, tests/ops/test_kernel_compile.py): a step's tiles past the CTA's share,
// strips past N and idle warpgroups carry zero codes instead. ptxas: 95-128
// registers, no spills at NT = 16, <= 8 bytes at NT = 32, up to 156 bytes at NT = 64 (epilogue).
// EXTRA_NVFLAGS=-DSHARQ_RS_U=.. -DSHARQ_RS_SETS=.. build other stage depths / fragment sets for an
// A/B (U a multiple of SETS).
//
// Status (H200, session 33, benchmarks/results/kernels-H200-wgmma-rs.json): a forced variant
// ("wgmmars"), not in the automatic choice. GEMM alone, us, this kernel against the automatic one:
// gate_up 41.0 / 41.5 against 42.7 / 42.8 at M = 24 / 32 (the only wins), 33.4 against 21.7 at
// M = 8 and 57.9 against 43.7 at 64; o / qkv / down slower at every M (few groups: split-K rounds
// with the x_hat staging up front). The time grows with the token columns (gate_up 33.4 / 41.5 /
// 57.9 at NT = 16 / 32 / 64, ~0.5 us a column) on top of a ~25 us floor. Session 34
// (kernels-H200-wgmma-rs-ab.json): the x_hat staging costs ~5 us (every CTA reads the share from
// L2), the MMAs 2 / 5 / 11 us at NT = 16 / 32 / 64, and the register-streamed weights reach ~25
// GB/s an SM; other stage depths, a shared-memory ring fed by bulk copies, overlapped staging and a
// balanced (stream-K) split were all slower for gate_up (docs/KERNELS.md).
//
// The k order: gemm.cu's layout permutes k inside a 64-k tile (lane q feeds logical k {2q, 2q+1}
// and {2q+8, 2q+9} of k16 step j with physical k 16q + 4j + {0,1} and {2,3}), so B must follow it:
// in k16 step j, core matrix c (logical k 8c .. 8c+7) holds, for a = 0..3, the 32-bit pair of
// physical k 16a + 4j + 2c and + 1, i.e. physical pair P = 8a + 2j + c (16 bytes a token).
// A TMA box cannot gather 4-byte pairs 32 bytes apart, so the staging threads do it: a 16-byte load
// of physical k 8i .. 8i+7 (pairs 4i .. 4i+3) scatters pair r to block s = 4 (i & 1) + r at
// position a = i >> 1. Shared memory per k-tile: [8 blocks s][NT / 8 token groups][8 tokens][16 B];
// step j's descriptor starts at block 2j, LBO = block size (NT x 16 B, to block 2j + 1), SBO = 128.
#include "gemm_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"
#include "wgmma_ops.cuh"

#include <algorithm>

namespace sharq {
namespace {

using tile::ld_stream;
using tile::MmaT;

constexpr int kRsWGs = 4;                  // warpgroups a CTA
constexpr int kRsThreads = 128 * kRsWGs;   // 1 CTA an SM: <= 128 registers a thread
#ifndef SHARQ_RS_U
#define SHARQ_RS_U 4
#endif
#ifndef SHARQ_RS_SETS
#define SHARQ_RS_SETS 2
#endif
constexpr int kRsU = SHARQ_RS_U;           // k-tiles a register stage
constexpr int kRsSets = SHARQ_RS_SETS;     // A fragment sets: MMA groups in flight + 1
static_assert(kRsU % kRsSets == 0, "a tile's fragment set must be a compile-time index");
constexpr int kRsMaxSplit = 8;             // portable cluster size
constexpr int kRsSmemBudget = 220 * 1024;  // x_hat share + split-K partials (of 227 KB)
constexpr int kRsMaxDevices = 64;

template <int NT>
struct RsCfg {
  static constexpr int kXTile = NT * 128;                  // a k-tile of x_hat: NT tokens x 64 k, 16-bit
  static constexpr int kBlock = NT * 16;                   // one of its 8 blocks (LBO)
  static constexpr int kPartial = kRsWGs * 64 * NT * 4;    // FP32 partials of the CTA's warpgroups
  static constexpr int kAcc = NT / 2;                      // accumulators a thread
  static_assert(NT == 16 || NT == 32 || NT == 64, "token columns (wgmma_ops.cuh's RS N)");
};

// Register stage: U k-tiles' code words and scale pairs of the lane.
struct RsStage {
  uint4 q[kRsU];
  uint32_t s[kRsU];
};

// Decode the lane's 16 code bytes + scale pair into the four k16 steps' A fragments (gemm_tile.cuh's
// a_step, as mma_tile builds them).
template <typename T>
__device__ __forceinline__ void decode_frags(uint32_t (&a)[4][4], const uint4& qv, uint32_t s16) {
  uint32_t sg, sg8;
  MmaT<T>::scales(s16, sg, sg8);
  const uint32_t w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) tile::a_step<T>(a[j], w, j, sg, sg8);
}

// One output quad of a warpgroup's accumulators (registers 4i .. 4i+3 of thread t: rows g, g + 8 of
// warp w's strip, tokens 8i + 2q, + 1) -> y, scaled, biased, rounded once; rows >= n_valid and
// tokens >= M are not stored.
template <typename T>
__device__ __forceinline__ void store_quad(const float (&v)[4], int group, int t, int i, int M, int n_valid,
                                           float ts, const T* bias, T* y, int64_t ys) {
  const int w = t >> 5, ln = t & 31;
  const int n0 = group * 64 + 16 * w + (ln >> 2), m0 = 8 * i + 2 * (ln & 3);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int n = n0 + (c >= 2 ? 8 : 0), m = m0 + (c & 1);
    if (m < M && n < n_valid) {
      float o = __fmul_rn(v[c], ts);
      if (bias != nullptr) o = __fadd_rn(o, Elem<T>::to_float(bias[n]));
      y[(int64_t)m * ys + n] = Elem<T>::from_float(o);
    }
  }
}

template <typename T, int NT, int SBT, bool SPLIT>
__global__ void __launch_bounds__(kRsThreads, 1)
gemm_wgmma_rs_kernel(const T* __restrict__ x, int64_t xs, const uint4* __restrict__ qw,
                     const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                     const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int KT,
                     int nstrips, int S, int rounds, int xbytes) {
  using C = RsCfg<NT>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int rank = SPLIT ? (int)blockIdx.x % S : 0;
  const int cid = SPLIT ? (int)blockIdx.x / S : (int)blockIdx.x;
  const int slots = (SPLIT ? (int)gridDim.x / S : (int)gridDim.x) * kRsWGs;
  const int wg = threadIdx.x >> 7, t = threadIdx.x & 127;
  const int warp = t >> 5, lane = t & 31;
  const int g = lane >> 2, q = lane & 3;
  const int t0 = (int)((int64_t)KT * rank / S);
  const int nk = (int)((int64_t)KT * (rank + 1) / S) - t0;
  const int ngroups = (nstrips + 3) / 4;
  const int nsteps = (nk + kRsU - 1) / kRsU;
  const int soff = (SBT == 32 ? (q >> 1) : q) * 16 + 2 * g;  // the lane's scale pair in a tile
  const float ts = __fmul_rn(tscale[0], 128.0f);
  const uint32_t xsm = async::smem_u32(smem);

  // Step position: round r, step s of the round; the warp's strip and its lane's pointers at the
  // step's first tile (advanced by increments inside a round).
  struct Pos {
    int group;
    bool load;  // the warp loads: its warpgroup has a group this round and its strip exists
    const uint4* q;
    const uint8_t* sp;
  };
  auto at_round = [&](Pos& p, int r) {
    p.group = r * slots + cid * kRsWGs + wg;
    const int strip = 4 * p.group + warp;
    p.load = p.group < ngroups && strip < nstrips;
    const int64_t tile = (int64_t)(p.load ? strip : 0) * KT + t0;
    p.q = qw + tile * 32 + lane;
    p.sp = sc + tile * SBT + soff;
  };
  // Register stage of step s (tiles s U .. s U + U - 1 of the CTA's share). Tiles past the share,
  // strips past N and idle warpgroups get zero codes, which decode to zeros: the MMAs below run for
  // every tile of every step unconditionally (skipping a tile's MMAs by a data-dependent branch
  // makes ptxas serialize them all, its C7518), adding zeros (x_hat rows are finite, or NaN for a
  // non-finite input row, whose outputs are NaN through its real tiles anyway).
  auto load = [&](RsStage& st, const Pos& p, int s) {
#pragma unroll
    for (int u = 0; u < kRsU; ++u) {
      if (p.load && s * kRsU + u < nk) {
        st.q[u] = ld_stream(p.q + (s * kRsU + u) * 32);
        st.s[u] = *reinterpret_cast<const uint16_t*>(p.sp + (s * kRsU + u) * SBT);
      } else {
        st.q[u] = make_uint4(0, 0, 0, 0);
        st.s[u] = 0;
      }
    }
  };

  float acc[C::kAcc];
#pragma unroll
  for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.0f;
  uint32_t afr[kRsSets][4][4];

  auto compute = [&](const RsStage& st, int s) {
#pragma unroll
    for (int u = 0; u < kRsU; ++u) {
      const int tl = min(s * kRsU + u, nk - 1);  // a zero tile past the share reads a real x_hat tile
      decode_frags<T>(afr[u % kRsSets], st.q[u], st.s[u]);
      async::wgmma_fence();
      const uint32_t xb = xsm + tl * C::kXTile;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        wg::WgmmaRs<T, NT>::mma(acc, afr[u % kRsSets][j], async::desc_interleave(xb + 2 * j * C::kBlock, C::kBlock, 128));
      async::wgmma_commit();
      async::wgmma_wait<kRsSets - 1>();
    }
  };

  float4* part = reinterpret_cast<float4*>(smem + xbytes);  // [wg][NT / 8][128 threads] (S > 1)
  const int nsteps2 = (nsteps + 1) & ~1;  // steps a round, even (the two stages alternate)
  RsStage A, B;
  Pos p;
  at_round(p, 0);
  // Programmatic dependent launch: the weights do not depend on the preparation kernel, x_hat does.
  load(A, p, 0);
  async::pdl_wait();
  // Stage the CTA's share of x_hat (k-tiles t0 .. t0 + nk - 1, NT rows; rows >= M as zeros),
  // permuted into the blocks described in the header.
  for (int idx = threadIdx.x; idx < NT * nk * 8; idx += kRsThreads) {
    const int i = idx & 7, tl = (idx >> 3) % nk, m = idx / (8 * nk);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m < M) v = *reinterpret_cast<const uint4*>(x + (int64_t)m * xs + (int64_t)(t0 + tl) * 64 + 8 * i);
    uint8_t* base = smem + tl * C::kXTile + (m >> 3) * 128 + (m & 7) * 16 + (i >> 1) * 4;
    const uint32_t pr[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int r = 0; r < 4; ++r) *reinterpret_cast<uint32_t*>(base + (4 * (i & 1) + r) * C::kBlock) = pr[r];
  }
  async::fence_proxy_async_smem();
  __syncthreads();

  for (int r = 0; r < rounds; ++r) {
    const int group = p.group;
    for (int s = 0; s < nsteps2; s += 2) {
      load(B, p, s + 1);
      compute(A, s);
      if (s + 2 < nsteps2) load(A, p, s + 2);
      compute(B, s + 1);
    }
    if (r + 1 < rounds) {  // the next round's first stage, in flight through the epilogue
      at_round(p, r + 1);
      load(A, p, 0);
    }
    async::wgmma_wait<0>();
    float out[C::kAcc];
#pragma unroll
    for (int i = 0; i < C::kAcc; ++i) {
      async::fence_operand(acc[i]);
      out[i] = acc[i];
      acc[i] = 0.0f;
    }
    if constexpr (!SPLIT) {
      if (group < ngroups) {
#pragma unroll
        for (int i = 0; i < NT / 8; ++i) {
          const float v[4] = {out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]};
          store_quad<T>(v, group, t, i, M, n_valid, ts, bias, y, ys);
        }
      }
    } else {
      // rank r' reduces quads [r' Q / S, (r' + 1) Q / S) of the CTA's Q over the ranks, in rank order
#pragma unroll
      for (int i = 0; i < NT / 8; ++i)
        part[(wg * (NT / 8) + i) * 128 + t] = make_float4(out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
      async::cluster_sync();
      constexpr int Q = kRsWGs * (NT / 8) * 128;
      const int e0 = Q * rank / S, e1 = Q * (rank + 1) / S;
      for (int e = e0 + (int)threadIdx.x; e < e1; e += kRsThreads) {
        const float4 sum = async::add_peers_f4(async::ld_peer_f4(part + e, 0), part + e, S);
        const int ew = e / ((NT / 8) * 128), ei = (e / 128) % (NT / 8), et = e % 128;
        const int g2 = r * slots + cid * kRsWGs + ew;
        const float v[4] = {sum.x, sum.y, sum.z, sum.w};
        if (g2 < ngroups) store_quad<T>(v, g2, et, ei, M, n_valid, ts, bias, y, ys);
      }
      async::cluster_sync();  // peers may still read this CTA's partials
    }
  }
}

// Split-K cluster size: the smallest S in 1, 2, 4, 8 whose share of x_hat (and partials) fits.
template <int NT>
int rs_split(int KT) {
  using C = RsCfg<NT>;
  for (int S = 1; S <= kRsMaxSplit; S *= 2) {
    if (S > KT) break;
    const int bytes = (KT + S - 1) / S * C::kXTile + (S > 1 ? C::kPartial : 0);
    if (bytes <= kRsSmemBudget) return S;
  }
  return 0;
}

template <typename T, int NT, int SBT, bool SPLIT>
cudaError_t launch_rs_cfg(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                          const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int S,
                          cudaStream_t stream) {
  using C = RsCfg<NT>;
  auto kern = gemm_wgmma_rs_kernel<T, NT, SBT, SPLIT>;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kRsMaxDevices) return cudaErrorInvalidDevice;
  static bool configured[kRsMaxDevices] = {};  // the shared-memory opt-in is per device
  static int active[kRsMaxSplit + 1] = {};     // co-resident clusters of S CTAs (per instantiation)
  if (!configured[dev]) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kRsSmemBudget);
    if (e != cudaSuccess) return e;
    configured[dev] = true;
  }
  const int KT = K / 64, nstrips = N / 16, ngroups = (nstrips + 3) / 4;
  const int xbytes = (KT + S - 1) / S * C::kXTile;
  const int smem = xbytes + (SPLIT ? C::kPartial : 0);
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2];
  cfg.blockDim = dim3(kRsThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = S;
  attr[1].val.clusterDim.y = 1;
  attr[1].val.clusterDim.z = 1;
  cfg.attrs = attr;
  int clusters = sm_count();
  if (SPLIT) {
    if (active[S] == 0) {
      cudaLaunchConfig_t q = cfg;
      q.gridDim = dim3(S);
      q.dynamicSmemBytes = kRsSmemBudget;
      q.attrs = attr + 1;
      q.numAttrs = 1;
      int n = 0;
      active[S] = cudaOccupancyMaxActiveClusters(&n, kern, &q) == cudaSuccess && n > 0 ? n : -1;
    }
    if (active[S] < 0) return cudaErrorInvalidConfiguration;
    clusters = active[S];
  }
  clusters = std::max(1, std::min(clusters, (ngroups + kRsWGs - 1) / kRsWGs));
  const int rounds = (ngroups + clusters * kRsWGs - 1) / (clusters * kRsWGs);
  cfg.gridDim = dim3(clusters * S);
  cfg.numAttrs = SPLIT ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), xs, static_cast<const uint4*>(qw),
                            static_cast<const uint8_t*>(sc), ts, static_cast<const T*>(bias), static_cast<T*>(y), ys,
                            M, n_valid, KT, nstrips, S, rounds, xbytes);
}

template <typename T, int NT>
cudaError_t launch_rs_nt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts, const void* bias,
                         void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock, cudaStream_t stream) {
  const int S = rs_split<NT>(K / 64);
  if (S == 0) return cudaErrorInvalidValue;
  if (wblock == 32)
    return S > 1 ? launch_rs_cfg<T, NT, 32, true>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, S, stream)
                 : launch_rs_cfg<T, NT, 32, false>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, S, stream);
  return S > 1 ? launch_rs_cfg<T, NT, 64, true>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, S, stream)
               : launch_rs_cfg<T, NT, 64, false>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, S, stream);
}

template <typename T>
cudaError_t launch_rs_dt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts, const void* bias,
                         void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock, cudaStream_t stream) {
  if (M <= 16) return launch_rs_nt<T, 16>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 32) return launch_rs_nt<T, 32>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_rs_nt<T, 64>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
}

}  // namespace

int gemm_wgmma_rs_split(int M, int K) {
  if (M <= 0 || M > kGemmWgmmaRsLimitM || K <= 0 || K % 64) return 0;
  return M <= 16 ? rs_split<16>(K / 64) : M <= 32 ? rs_split<32>(K / 64) : rs_split<64>(K / 64);
}

cudaError_t launch_gemm_wgmma_rs(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                                 const float* tensor_scale, const void* bias, void* y, int64_t y_stride, int M,
                                 int N, int n_valid, int K, int wblock, int dtype, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > kGemmWgmmaRsLimitM || N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || (x_stride * 2) % 16 != 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16:
      return launch_rs_dt<__nv_bfloat16>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid,
                                         K, wblock, stream);
    case kFP16:
      return launch_rs_dt<__half>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K,
                                  wblock, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
