// gemm_wgmma.cu: SharQ W4A16 GEMM for M > 24 on Hopper: warpgroup MMAs (wgmma) with the weights
// decoded to 16 bits in registers, TMA into a shared-memory ring. y = x_hat @ deQ(W)^T *
// tensor_scale + bias: the contract of gemm.cu (same tiled weights, same exact dequantization,
// FP32 accumulation); only the FP32 summation order differs from the mma.sync kernels.
//
// CTA: 128 weight rows (8 strips of 16) x BM tokens; 2 consumer warpgroups + 1 producer
// warpgroup (one thread of it works), 384 threads, 1 CTA an SM; setmaxnreg gives the consumers
// the registers.
//  * producer: per ring slot (ks consecutive 64-k tiles), three TMA requests: the 8 strips'
//    weight tiles (3-D map [strips][KT][512 B] -> [8][ks][512 B]), their scale bytes (same shape),
//    and ks x_hat boxes [BM rows][64 k] with the 128-byte swizzle; strips past N and rows past M
//    arrive as zeros; all complete on the slot's `full` mbarrier. The weight requests of the first
//    kStages slots are issued before griddepcontrol.wait (they do not depend on the preparation
//    kernel that writes x_hat). Few, large requests: 20 small ones a slot left the consumers
//    waiting (benchmarks/results/kernels-H200-wgmma-variants.json).
//  * consumers: per 64-k tile, each warp rebuilds the m16n8k16 A fragments of its 16-row strip(s)
//    in natural k order from the tiled words (below) and scales them; then wgmma.m64nBMk16 with A
//    from registers and B = the x_hat box through a shared-memory descriptor (+32 bytes a k16
//    step), committed as one group, waited before the registers are rewritten. BM <= 128:
//    ping-pong, the two warpgroups take alternate slots and each computes all 128 rows (two m64
//    sub-tiles), so one decodes while the other's MMAs run. BM = 256: each warpgroup computes 64
//    rows over every slot and decodes the next tile while its MMAs run (two register buffers).
//    A slot is released (`empty` mbarrier, one arrival a warp that read it) once its MMAs are done.
// Natural-order A from the tiled layout (gemm.cu's header): lane (g, j)'s four tiled words hold
// rows g, g+8 at k 16j .. 16j+15; the A fragment of lane (g, q) at k16 step j needs k 16j + {2q,
// 2q+1} (words w0, w1: code pair q) and 16j + 8 + {2q, 2q+1} (w2, w3: code pair q). So every lane
// reads lane (4g + j)'s 16 bytes in step j (a quad reads one address: a broadcast) and decodes
// pair q with its own rotations (gemm_tile.cuh pair_rt); the scale pair (s_g, s_g+8) of step j is block
// j (16-blocks) or j / 2 (32-blocks). x_hat is used in its natural order, as every GEMM here.
// Split-K over a thread-block cluster (1 x S x 1): S is the largest cluster size <= 8 whose S x
// tiles CTAs all fit at once (cudaOccupancyMaxActiveClusters), else 1. CTA rank r takes k-tiles
// [r KT / S, (r+1) KT / S) (in slots, from a start rotated by the tile index). After the main loop
// each CTA stores its FP32 partial tile(s) in its own shared memory, and rank r reduces token rows
// [r rows / S, (r+1) rows / S) over (rank, warpgroup) in a fixed order through distributed shared
// memory: deterministic, no workspace, no atomics. Then * tensor_scale * 2^7, + bias, one rounding.
// Token tiles (launch_wgmma_dt): BM = 32 / 64 / 128 for M <= 32 / 64 / 128 (one tile), 256 above
// (tiles along grid z).
#include "gemm_tile.cuh"
#include "sharq_kernels.h"
#include "sm90_async.cuh"
#include "wgmma_ops.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>

namespace sharq {
namespace {

using tile::MmaT;

constexpr int kConsumerWarpgroups = 2;
constexpr int kConsumerWarps = kConsumerWarpgroups * 4;
constexpr int kWgThreads = kConsumerWarps * 32 + 128;  // + the producer warpgroup (one warp works)
// registers a thread after setmaxnreg: consumers hold the accumulators, the producer only
// addresses (2 x 128 x 232 + 128 x 40 <= 64K)
constexpr int kConsumerRegs = 232, kProducerRegs = 40;
constexpr int kTileBytes = 512;                        // one 16 x 64 weight tile (layout.py)
constexpr int kScaleSlot = 64;                         // scale bytes of a strip's tile (at most)
constexpr int kSmemBudget = 224 * 1024;                // the ring (of 227 KB a CTA)
constexpr int kMaxSplit = 8;                           // portable cluster size
constexpr int kMinGroupsPerSplit = 2;  // ring slots a split at least
constexpr int kMaxDevices = 64;  // devices a process may launch on (per-device opt-ins)

// BM tokens x BN = 128 weight rows a CTA. Ping-pong (PP, BM <= 128): the two consumer warpgroups
// take alternate ring slots and each computes all 128 rows (two m64 sub-tiles), so one decodes
// while the other's MMAs run; their two partial tiles are summed in the epilogue. BM = 256: each
// warpgroup computes 64 of the rows over every slot (128 accumulators a thread: no room for two
// sub-tiles) and decodes its next k-tile while its MMAs run.
template <int BM, bool PP>
struct WgCfg {
  static constexpr int kStrips = 8;  // 16-row strips a CTA
  static constexpr int kBN = 16 * kStrips;
  static constexpr int kSubs = PP ? 2 : 1;       // m64 sub-tiles a consumer warpgroup computes
  static constexpr int kHalves = PP ? 2 : 1;     // partial tiles a CTA (one a warpgroup in PP)
  static constexpr int kSlotUsers = PP ? 4 : 8;  // consumer warps that release a slot
  // Decode the next k-tile while this one's MMAs run (BM = 256: -1% / -4% at M = 256 / 1024); in
  // PP the other warpgroup already overlaps the decode, and the pipelined loop was slower (M = 32
  // 127.5 vs 118.7 us, M = 64 136.8 vs 132.5: benchmarks/results/kernels-H200-wgmma-variants.json)
  static constexpr bool kPipe = !PP;
  // k-tiles a ring slot (at most; ks at run time when K/64 is not a multiple): few, large TMA
  // requests per slot (the producer's issue rate limited small slots)
  static constexpr int kKs = BM <= 32 ? 4 : BM <= 64 ? 2 : 1;
  static constexpr int kBox = BM * 128;  // one x_hat box: BM rows of 64 16-bit values
  static constexpr int kXBytes = kKs * kBox;
  static constexpr int kWBytes = kKs * kStrips * kTileBytes;  // [strip][ks][512 B]
  static constexpr int kSBytes = kKs * kStrips * kScaleSlot;  // [strip][ks][sbt]
  static constexpr int kStage = (kXBytes + kWBytes + kSBytes + 1023) / 1024 * 1024;
  static constexpr int kStages = kSmemBudget / kStage < 8 ? kSmemBudget / kStage : 8;
  static constexpr int kRing = kStages * kStage;
  static constexpr int kPRow = kBN + 4;  // partial-tile row (floats), padded: no bank conflicts
  static constexpr int kPartial = kHalves * BM * kPRow * 4;
  static constexpr int kSmem = (kRing > kPartial ? kRing : kPartial) + 1024;
  static_assert(BM % 32 == 0 && BM <= 256, "token tile");
  static_assert(PP || BM == 256, "row-split warpgroups only for the widest token tile");
  // each consumer warpgroup holds at most 2 slots (its current one and, decoding ahead, the next)
  // while the producer needs one free: no deadlock with >= 2 x 2 + 1 slots
  static_assert(kStages >= 5, "ring too shallow");
};

// The three tensor maps of a launch (host-encoded): x_hat [M][K] boxes {64, BM} (128-byte
// swizzle), weights [strips][KT][128 u32] boxes {128, ks, 8}, scales [strips][KT][sbt] boxes
// {sbt, ks, 8}; strips past N and rows past M arrive as zeros.
struct WgMaps {
  CUtensorMap x, w, s;
};

template <typename T, int BM, bool PP>
__global__ void __launch_bounds__(kWgThreads, 1)
gemm_wgmma_kernel(const __grid_constant__ WgMaps maps, const float* __restrict__ tscale,
                  const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int KT,
                  int sbt, int wblock, int ks) {
  using C = WgCfg<BM, PP>;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t full[C::kStages], empty[C::kStages];
  uint8_t* smem = smem_raw + ((1024 - (async::smem_u32(smem_raw) & 1023)) & 1023);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rank = blockIdx.y, nsplit = gridDim.y;  // cluster (1, S, 1): rank = blockIdx.y
  // this CTA's k-groups (ks tiles each; KT % ks == 0): [g0, g0 + nk), visited from a rotated start
  // (CTAs that run at the same time then read different k)
  const int KG = KT / ks;
  const int g0 = (int)((int64_t)KG * rank / nsplit);
  const int nk = (int)((int64_t)KG * (rank + 1) / nsplit) - g0;
  const int rot = nk > 0 ? (int)((blockIdx.x * 7u + blockIdx.z * 3u) % (unsigned)nk) : 0;
  auto group_of = [&](int i) { return g0 + (i + rot >= nk ? i + rot - nk : i + rot); };
  const int strip0 = blockIdx.x * C::kStrips;
  const int m0 = blockIdx.z * BM;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      async::mbar_init(&full[s], 1);
      async::mbar_init(&empty[s], C::kSlotUsers);
    }
    async::mbar_fence_init();
  }
  __syncthreads();

  if (warp >= kConsumerWarps) {
    // ---- producer: one thread, three TMA requests (+ ks - 1 for x) a slot ----
    async::setmaxnreg_dec<kProducerRegs>();
    if (warp == kConsumerWarps && lane == 0) {
      const uint32_t tx = (uint32_t)(ks * (C::kStrips * (kTileBytes + sbt) + C::kBox));
      auto issue_w = [&](int i) {
        const int slot = i % C::kStages, t = group_of(i) * ks;
        uint8_t* st = smem + slot * C::kStage;
        async::mbar_arrive_expect_tx(&full[slot], tx);
        async::tma_load_3d(st + C::kXBytes, &maps.w, 0, t, strip0, &full[slot]);
        async::tma_load_3d(st + C::kXBytes + C::kWBytes, &maps.s, 0, t, strip0, &full[slot]);
      };
      auto issue_x = [&](int i) {
        const int slot = i % C::kStages, t = group_of(i) * ks;
        for (int kk = 0; kk < ks; ++kk)
            async::tma_load_2d(smem + slot * C::kStage + kk * C::kBox, &maps.x, 64 * (t + kk), m0, &full[slot]);
      };
      const int pro = min(nk, C::kStages);
      for (int i = 0; i < pro; ++i) issue_w(i);
      async::pdl_wait();  // x_hat is written by the preceding kernel
      for (int i = 0; i < pro; ++i) issue_x(i);
      for (int i = pro; i < nk; ++i) {
        async::mbar_wait(&empty[i % C::kStages], ((i / C::kStages) & 1) ^ 1);
        issue_w(i);
        issue_x(i);
      }
    }
  } else {
    // ---- consumers ----
    async::setmaxnreg_inc<kConsumerRegs>();
    const int wg = warp >> 2, wi = warp & 3, g = lane >> 2, q = lane & 3;
    int ra, rb;  // the lane decodes code pair q (gemm_tile.cuh)
    tile::pair_rotations(q, ra, rb);
    const int bshift = wblock == 32 ? 1 : 0;
    constexpr int S = C::kSubs;
    float acc[S][BM / 2];
#pragma unroll
    for (int r = 0; r < S; ++r)
#pragma unroll
      for (int c = 0; c < BM / 2; ++c) acc[r][c] = 0.0f;
    // The warpgroup's k-tiles in order: slots i = i0, i0 + di, ... (all slots, or every other one in
    // PP), ks k-tiles each. Software pipeline: the next k-tile's A fragments are decoded into the
    // other register buffer while this k-tile's MMAs run (ptxas then issues each MMA group only
    // after the previous one completed, but the decode is hidden); a slot is released once the
    // MMAs of its last k-tile have completed.
    const int i0 = PP ? wg : 0, di = PP ? 2 : 1;
    uint32_t a[2][4][S][4];  // [buffer][k16 step j][sub-tile r]
    auto decode = [&](uint32_t (&ab)[4][S][4], const uint8_t* st, int kk) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int r = 0; r < S; ++r) {
          const int sl = (4 * (PP ? r : wg) + wi) * ks + kk;  // the warp's strip, k-tile kk
          const uint4 w = *reinterpret_cast<const uint4*>(st + C::kXBytes + sl * kTileBytes + (4 * g + j) * 16);
          const uint32_t s16 = *reinterpret_cast<const uint16_t*>(st + C::kXBytes + C::kWBytes + sl * sbt +
                                                                  (j >> bshift) * 16 + 2 * g);
          uint32_t sg, sg8;
          MmaT<T>::scales(s16, sg, sg8);
          ab[j][r][0] = MmaT<T>::mul(MmaT<T>::pair_rt(w.x, ra, rb), sg);
          ab[j][r][1] = MmaT<T>::mul(MmaT<T>::pair_rt(w.y, ra, rb), sg8);
          ab[j][r][2] = MmaT<T>::mul(MmaT<T>::pair_rt(w.z, ra, rb), sg);
          ab[j][r][3] = MmaT<T>::mul(MmaT<T>::pair_rt(w.w, ra, rb), sg8);
        }
      }
    };
    auto issue = [&](const uint32_t (&ab)[4][S][4], const uint8_t* st, int kk) {
#pragma unroll
      for (int r = 0; r < S; ++r)
#pragma unroll
        for (int c = 0; c < BM / 2; ++c) async::fence_operand(acc[r][c]);
      async::wgmma_fence();
      const uint64_t dx = async::desc_sw128(st + kk * C::kBox);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < S; ++r) wg::Wgmma<T, BM>::mma(acc[r], ab[j][r], dx + 2 * j);
      async::wgmma_commit();
    };
    auto slot_data = [&](int i) { return smem + (i % C::kStages) * C::kStage; };
    if (!C::kPipe) {
      for (int i = i0; i < nk; i += di) {
        async::mbar_wait(&full[i % C::kStages], (i / C::kStages) & 1);
        for (int kk = 0; kk < ks; ++kk) {
          decode(a[0], slot_data(i), kk);
          issue(a[0], slot_data(i), kk);
          async::wgmma_wait<0>();
        }
        if (lane == 0) async::mbar_arrive(&empty[i % C::kStages]);
      }
    } else if (i0 < nk) {
      int i = i0, kk = 0;
      int prev_slot = -1;  // a slot whose last k-tile's MMAs may still run
      async::mbar_wait(&full[i % C::kStages], (i / C::kStages) & 1);
      decode(a[0], slot_data(i), 0);
      // one k-tile: issue its MMAs from `cur`, decode the next one into `nxt`; false at the end
      auto step = [&](const uint32_t (&cur)[4][S][4], uint32_t (&nxt)[4][S][4]) {
        issue(cur, slot_data(i), kk);
        int ni = i, nkk = kk + 1;
        if (nkk == ks) {
          ni = i + di;
          nkk = 0;
        }
        const bool more = ni < nk;
        if (more) {
          if (nkk == 0) async::mbar_wait(&full[ni % C::kStages], (ni / C::kStages) & 1);
          decode(nxt, slot_data(ni), nkk);
        }
        async::wgmma_wait<1>();  // the previous k-tile's MMAs have completed
        if (prev_slot >= 0 && lane == 0) async::mbar_arrive(&empty[prev_slot]);
        prev_slot = nkk == 0 ? i % C::kStages : -1;  // k-tile (i, kk) was its slot's last
        i = ni;
        kk = nkk;
        return more;
      };
      while (step(a[0], a[1]) && step(a[1], a[0])) {
      }
      async::wgmma_wait<0>();
      if (prev_slot >= 0 && lane == 0) async::mbar_arrive(&empty[prev_slot]);
    }
#pragma unroll
    for (int r = 0; r < S; ++r)
#pragma unroll
      for (int c = 0; c < BM / 2; ++c) async::fence_operand(acc[r][c]);
    // partial tiles [half][BM tokens][BN rows] (FP32) over the ring: every slot has been consumed
    async::named_sync(1, kConsumerWarps * 32);
    float* part = reinterpret_cast<float*>(smem) + (PP ? wg : 0) * BM * C::kPRow;
#pragma unroll
    for (int r = 0; r < S; ++r)
#pragma unroll
      for (int nb = 0; nb < BM / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int n = 64 * (PP ? r : wg) + 16 * wi + g + 8 * (c >> 1);
          const int m = 8 * nb + 2 * q + (c & 1);
          part[m * C::kPRow + n] = acc[r][4 * nb + c];
        }
  }

  // ---- fixed-order reduction over the warpgroups' halves and the cluster's K splits ----
  if (nsplit > 1) async::cluster_sync();
  else __syncthreads();
  {
    const float* part = reinterpret_cast<const float*>(smem);
    const int rows = min(BM, M - m0);
    const int r0 = rows * rank / nsplit, r1 = rows * (rank + 1) / nsplit;
    const float ts = __fmul_rn(tscale[0], 128.0f);
    const int n_base = strip0 * 16;
    constexpr int kQuads = C::kBN / 4;
    for (int e = threadIdx.x; e < (r1 - r0) * kQuads; e += kWgThreads) {
      const int m = r0 + e / kQuads, n = 4 * (e % kQuads);
      const float* p = part + m * C::kPRow + n;
      // fixed order: rank 0 half 0, rank 0 half 1, rank 1 half 0, ...
      float4 s = nsplit > 1 ? async::ld_peer_f4(p, 0) : *reinterpret_cast<const float4*>(p);
      for (int k = 0; k < nsplit; ++k)
#pragma unroll
        for (int h = 0; h < C::kHalves; ++h) {
          if (k == 0 && h == 0) continue;
          const float* ph = p + h * BM * C::kPRow;
          const float4 v = nsplit > 1 ? async::ld_peer_f4(ph, k) : *reinterpret_cast<const float4*>(ph);
          s.x = __fadd_rn(s.x, v.x);
          s.y = __fadd_rn(s.y, v.y);
          s.z = __fadd_rn(s.z, v.z);
          s.w = __fadd_rn(s.w, v.w);
        }
      const float sv[4] = {s.x, s.y, s.z, s.w};
      T* yr = y + (int64_t)(m0 + m) * ys;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int col = n_base + n + u;
        if (col < n_valid) {
          float v = __fmul_rn(sv[u], ts);
          if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[col]));
          yr[col] = Elem<T>::from_float(v);
        }
      }
    }
  }
  if (nsplit > 1) async::cluster_sync();  // peers may still read this CTA's partial tile
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link needed).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  if (fn == nullptr) {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }
  return fn;
}

// A launch of `threads`-thread CTAs with `smem` dynamic shared memory as clusters of 1 x S x 1
// (split-K), optionally with programmatic dependent launch; attr must outlive cfg.
void cluster_launch(cudaLaunchConfig_t& cfg, cudaLaunchAttribute (&attr)[2], dim3 grid, int threads, int smem,
                    int S, bool pdl, cudaStream_t stream) {
  cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = S;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 2 : 1;
}

// Split-K: the largest cluster size S (<= 8, >= 2 ring slots a split) whose S x tiles CTAs fit
// the GPU in one wave, counting only clusters the hardware can co-schedule (cluster CTAs must
// share a GPC: cudaOccupancyMaxActiveClusters, asked once per kernel and S); else 1.
template <typename K>
int choose_split(K kern, int smem, int tiles, int groups, int sms) {
  static int active[kMaxSplit + 1] = {};
  for (int S = std::min(kMaxSplit, groups / kMinGroupsPerSplit); S >= 2; --S) {
    if (tiles * S > sms) continue;
    if (active[S] == 0) {
      cudaLaunchConfig_t cfg;
      cudaLaunchAttribute attr[2];
      cluster_launch(cfg, attr, dim3(1, S, 1), kWgThreads, smem, S, false, nullptr);
      int n = 0;
      active[S] = cudaOccupancyMaxActiveClusters(&n, kern, &cfg) == cudaSuccess && n > 0 ? n : -1;
    }
    if (tiles <= active[S]) return S;
  }
  return 1;
}

template <typename T, int BM, bool PP>
cudaError_t launch_wgmma_t(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                           const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                           cudaStream_t stream) {
  using C = WgCfg<BM, PP>;
  auto kern = gemm_wgmma_kernel<T, BM, PP>;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  static bool configured[kMaxDevices] = {};  // the shared-memory opt-in is per device
  if (!configured[dev]) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
    if (e != cudaSuccess) return e;
    configured[dev] = true;
  }
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const int nstrips = N / 16, KT = K / 64, sbt = wblock == 32 ? 32 : 64;
  const int ks = KT % C::kKs == 0 ? C::kKs : 1;  // k-tiles a slot
  WgMaps maps;
  {
    const cuuint64_t gdim[2] = {(cuuint64_t)K, (cuuint64_t)M};
    const cuuint64_t gstride[1] = {(cuuint64_t)xs * sizeof(T)};
    const cuuint32_t box[2] = {64, (cuuint32_t)BM};
    const cuuint32_t estride[2] = {1, 1};
    const CUtensorMapDataType dt =
        std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    if (encode(&maps.x, dt, 2, const_cast<void*>(x), gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  {
    const cuuint64_t gdim[3] = {kTileBytes / 4, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {kTileBytes, (cuuint64_t)KT * kTileBytes};
    const cuuint32_t box[3] = {kTileBytes / 4, (cuuint32_t)ks, C::kStrips};
    const cuuint32_t estride[3] = {1, 1, 1};
    if (encode(&maps.w, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<void*>(qw), gdim, gstride, box, estride,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  {
    const cuuint64_t gdim[3] = {(cuuint64_t)sbt, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {(cuuint64_t)sbt, (cuuint64_t)KT * sbt};
    const cuuint32_t box[3] = {(cuuint32_t)sbt, (cuuint32_t)ks, C::kStrips};
    const cuuint32_t estride[3] = {1, 1, 1};
    if (encode(&maps.s, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(sc), gdim, gstride, box, estride,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }

  int sms = 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
  const int ntiles = (nstrips + C::kStrips - 1) / C::kStrips;
  const int mtiles = (M + BM - 1) / BM;
  const int split = choose_split(kern, C::kSmem, ntiles * mtiles, KT / ks, sms);

  cudaLaunchConfig_t cfg;
  cudaLaunchAttribute attr[2];
  cluster_launch(cfg, attr, dim3(ntiles, split, mtiles), kWgThreads, C::kSmem, split, true, stream);
  return cudaLaunchKernelEx(&cfg, kern, maps, ts, static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid,
                            KT, sbt, wblock, ks);
}

template <typename T>
cudaError_t launch_wgmma_dt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                            const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                            cudaStream_t stream) {
  if (M <= 32) return launch_wgmma_t<T, 32, true>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 64) return launch_wgmma_t<T, 64, true>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 128) return launch_wgmma_t<T, 128, true>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_wgmma_t<T, 256, false>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
}

// TMA reads x: 16-byte aligned base and row stride (the bindings check both for every GEMM)
bool wgmma_takes(const void* x, int64_t x_stride) {
  return reinterpret_cast<uintptr_t>(x) % 16 == 0 && (x_stride * 2) % 16 == 0;
}

}  // namespace

cudaError_t launch_gemm_wgmma(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                              const float* tensor_scale, const void* bias, void* y, int64_t y_stride, int M, int N,
                              int n_valid, int K, int wblock, int dtype, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if (!wgmma_takes(x, x_stride)) return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16:
      return launch_wgmma_dt<__nv_bfloat16>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N,
                                            n_valid, K, wblock, stream);
    case kFP16:
      return launch_wgmma_dt<__half>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid,
                                     K, wblock, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sharq
