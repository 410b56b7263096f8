// gemm_wgmma.cu: SharQ W4A16 GEMM for M > 24 on Hopper: warpgroup MMAs (wgmma) with both
// operands in shared memory: the weights decoded to 16 bits by the consumer warps themselves, x_hat
// by TMA. y = x_hat @ deQ(W)^T * tensor_scale + bias: the contract of gemm.cu (same tiled weights,
// same exact dequantization, FP32 accumulation); only the FP32 summation order differs from the
// mma.sync kernels.
//
// CTA: BN weight rows x BM tokens; 2 consumer warpgroups + 1 producer warpgroup (one thread of
// it works), 384 threads, 1 CTA an SM; setmaxnreg gives the consumers the registers. A consumer
// warpgroup computes kSubs 64-row sub-tiles: BM <= 64: 2 (BN = 256), BM = 128 / 256: 1 (BN = 128).
//  * producer: per ring slot (ks consecutive 64-k tiles), three TMA requests: the CTA's strips'
//    weight tiles (3-D map [strips][KT][512 B] -> [BN/16][ks][512 B]), their scale bytes (same
//    shape), and ks x_hat boxes [BM rows][64 k] with the 128-byte swizzle; strips past N and rows
//    past M arrive as zeros; all complete on the slot's `full` mbarrier. The weight requests of
//    the first kStages slots are issued before griddepcontrol.wait (they do not depend on the
//    preparation kernel that writes x_hat). Few, large requests: 20 small ones a slot left the
//    consumers waiting (benchmarks/results/kernels-H200-wgmma-variants.json).
//  * consumers: sub-tile r of warpgroup wg is weight rows 64 (wg kSubs + r) .. +63, strip
//    (wg kSubs + r) 4 + wi of warp wi. Software-pipelined over every k-tile: while the MMAs of
//    k-tile t run, each warp decodes tile t + 1 of its strips (the lane's own 16 bytes: rows g,
//    g+8 at k 16q .. +15, gemm.cu's layout) into 16-bit values times the block scale and stores
//    them into the sub-tiles' 64 x 64 A tiles of t + 1 (K-major, 128-byte swizzle: row r's
//    16-byte chunk c at r * 128 + (c ^ r % 8) * 16, the layout the x_hat boxes have), in the other
//    of the warpgroup's two A buffers; fence.proxy.async + a warpgroup barrier publish them, and
//    4 x kSubs wgmma.m64nBMk16 (both operands by descriptor, +32 bytes a k16 step) are committed
//    as one group. wgmma.wait_group 1 after issuing t + 1 frees t's A buffer and, at a slot's last
//    k-tile, the slot (`empty` mbarrier, one arrival a warp). Nothing writes an MMA operand
//    register (A from registers made each warpgroup wait for its MMAs before decoding the next
//    tile). Measured against that design, same process (benchmarks/results/
//    kernels-H200-wgmma-ss.json): GEMM sums over the 4 Llama-3.1-8B linears -2% / -3% at M = 32 /
//    64, +2% at 128, -6% at 256 / 512. Still far from its bytes and FLOPs at M <= 128 (KERNELS.md).
// Split-K over a thread-block cluster (1 x S x 1): S is the largest cluster size <= 8 whose S x
// tiles CTAs all fit at once (cudaOccupancyMaxActiveClusters), else 1. CTA rank r takes k-tiles
// [r KT / S, (r+1) KT / S) (in slots, from a start rotated by the tile index). After the main loop
// each CTA stores its FP32 partial tile in its own shared memory, and rank r reduces token rows
// [r rows / S, (r+1) rows / S) over the ranks in a fixed order through distributed shared
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

constexpr int kProducerRegs = 40;  // registers a producer thread keeps after setmaxnreg (addresses only)
constexpr int kTileBytes = 512;                        // one 16 x 64 weight tile (layout.py)
constexpr int kScaleSlot = 64;                         // scale bytes of a strip's tile (at most)
constexpr int kSmemBudget = 224 * 1024;                // the ring (of 227 KB a CTA)
constexpr int kMaxSplit = 8;                           // portable cluster size
constexpr int kMinGroupsPerSplit = 2;  // ring slots a split at least
constexpr int kMaxDevices = 64;  // devices a process may launch on (per-device opt-ins)

// BM tokens x BN weight rows a CTA: 2 consumer warpgroups, each computing kSubs 64-row sub-tiles
// (BM <= 64: 2, BN = 256: each warp decodes two strips a k-tile, twice the independent work
// between two warpgroup barriers; BM = 128 / 256: 1, BN = 128, the accumulators need the
// registers).
template <int BM>
struct WgCfg {
  static constexpr int kSubs = BM <= 64 ? 2 : 1;  // 64-row sub-tiles a warpgroup
  static constexpr int kWGs = 2;                   // consumer warpgroups
  static constexpr int kWarps = 4 * kWGs;          // consumer warps
  static constexpr int kThreads = 128 * kWGs + 128;  // + the producer warpgroup (one thread works)
  // Registers: the CTA launches with kLaunchRegs a thread (ptxas allocates the __launch_bounds__
  // maximum when the kernel uses setmaxnreg: 168); setmaxnreg only moves registers inside that
  // allocation, so the producer's release must cover the consumers' increase, or
  // setmaxnreg.inc waits forever. kRegs: a consumer thread's registers after it (232).
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kRegs = (kLaunchRegs * kThreads - 128 * kProducerRegs) / (128 * kWGs) / 8 * 8;
  static_assert(kWGs * 128 * kRegs + 128 * kProducerRegs <= kLaunchRegs * kThreads, "setmaxnreg pool");
  static constexpr int kStrips = 4 * kWGs * kSubs;  // 16-row strips a CTA, kSubs a consumer warp
  static constexpr int kBN = 16 * kStrips;
  static constexpr int kSlotUsers = kWarps;  // every consumer warp reads every slot
  // k-tiles a ring slot (at most; ks at run time when K/64 is not a multiple): few, large TMA
  // requests per slot (the producer's issue rate limited small slots), >= 5 slots in the budget
  static constexpr int kKs = BM <= 32 ? 2 : 1;
  static constexpr int kBox = BM * 128;  // one x_hat box: BM rows of 64 16-bit values
  static constexpr int kXBytes = kKs * kBox;
  static constexpr int kWBytes = kKs * kStrips * kTileBytes;  // [strip][ks][512 B]
  static constexpr int kSBytes = kKs * kStrips * kScaleSlot;  // [strip][ks][sbt]
  static constexpr int kStage = (kXBytes + kWBytes + kSBytes + 1023) / 1024 * 1024;
  static constexpr int kATile = 64 * 128;  // a warpgroup's decoded A tile: 64 rows x 64 k, 16-bit
  static constexpr int kABuf = kSubs * kATile;         // one A buffer of a warpgroup
  static constexpr int kABytes = kWGs * 2 * kABuf;     // two buffers a warpgroup
  static constexpr int kStages = (kSmemBudget - kABytes) / kStage < 8 ? (kSmemBudget - kABytes) / kStage : 8;
  static constexpr int kRing = kStages * kStage;
  static constexpr int kPRow = kBN + 4;  // partial-tile row (floats), padded: no bank conflicts
  static constexpr int kPartial = BM * kPRow * 4;
  static constexpr int kSmem = (kRing + kABytes > kPartial ? kRing + kABytes : kPartial) + 1024;
  static_assert(BM % 32 == 0 && BM <= 256, "token tile");
  // each consumer warpgroup holds at most 2 slots (the one its MMAs read, the one it decodes) while
  // the producer needs one free: no deadlock with >= 2 x 2 + 1 slots
  static_assert(kStages >= 5, "ring too shallow");
};

// The three tensor maps of a launch (host-encoded): x_hat [M][K] boxes {64, BM} (128-byte
// swizzle), weights [strips][KT][128 u32] boxes {128, ks, kStrips}, scales [strips][KT][sbt]
// boxes {sbt, ks, kStrips}; strips past N and rows past M arrive as zeros.
struct WgMaps {
  CUtensorMap x, w, s;
};

template <typename T, int BM>
__global__ void __launch_bounds__(WgCfg<BM>::kThreads, 1)
gemm_wgmma_kernel(const __grid_constant__ WgMaps maps, const float* __restrict__ tscale,
                  const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int KT,
                  int sbt, int wblock, int ks) {
  using C = WgCfg<BM>;
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

  if (warp >= C::kWarps) {
    // ---- producer: one thread, three TMA requests (+ ks - 1 for x) a slot ----
    async::setmaxnreg_dec<kProducerRegs>();
    if (warp == C::kWarps && lane == 0) {
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
    async::setmaxnreg_inc<C::kRegs>();
    constexpr int R = C::kSubs;
    const int wg = warp >> 2, wi = warp & 3, g = lane >> 2, q = lane & 3;
    // byte offsets inside a ring slot of the lane's words and scale pair (s_g, s_g+8) of k-tile 0 of
    // its strip in sub-tile r (strip (wg R + r) 4 + wi of the CTA's); k-tile kk: + kk 512 / + kk sbt
    uint32_t wofs[R], sofs[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int strip = (wg * R + r) * 4 + wi;
      wofs[r] = C::kXBytes + strip * ks * kTileBytes + lane * 16;
      sofs[r] = C::kXBytes + C::kWBytes + strip * ks * sbt + (wblock == 32 ? (q >> 1) : q) * 16 + 2 * g;
    }
    // the lane's word i (row g + 8 (i & 1), k 16q + 8 (i >> 1) .. +7) -> its 16-byte chunk of a
    // swizzled 64-row A tile (row 16 wi + g (+8): r % 8 = g)
    uint32_t aoff[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) aoff[i] = (16 * wi + g + 8 * (i & 1)) * 128 + (((2 * q + (i >> 1)) ^ g) * 16);
    // the warpgroup's two A buffers, R 64-row tiles each
    uint8_t* const abase = smem + C::kRing + 2 * wg * C::kABuf;
    const uint64_t da0 = async::desc_sw128(abase), dx0 = async::desc_sw128(smem);
    float acc[R][BM / 2];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < BM / 2; ++c) acc[r][c] = 0.0f;
    // k-tile kk of the slot at st -> A buffer buf (e2m1 * s * 2^-7, exact), published to the
    // warpgroup's MMAs
    auto decode = [&](const uint8_t* st, int kk, int buf) {
      uint8_t* dst = abase + buf * C::kABuf;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint4 w = *reinterpret_cast<const uint4*>(st + wofs[r] + kk * kTileBytes);
        const uint32_t s16 = *reinterpret_cast<const uint16_t*>(st + sofs[r] + kk * sbt);
        uint32_t sg, sg8;
        MmaT<T>::scales(s16, sg, sg8);
        const uint32_t wd[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const uint32_t s2 = (u & 1) ? sg8 : sg;
          uint4 o;
          o.x = MmaT<T>::mul(MmaT<T>::pair(wd[u], 0), s2);
          o.y = MmaT<T>::mul(MmaT<T>::pair(wd[u], 1), s2);
          o.z = MmaT<T>::mul(MmaT<T>::pair(wd[u], 2), s2);
          o.w = MmaT<T>::mul(MmaT<T>::pair(wd[u], 3), s2);
          *reinterpret_cast<uint4*>(dst + r * C::kATile + aoff[u]) = o;
        }
      }
      async::fence_proxy_async_smem();
      async::named_sync(2 + wg, 128);
    };
    // the MMAs of k-tile kk of ring slot `slot` on A buffer buf, one commit group
    auto issue = [&](int slot, int kk, int buf) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < BM / 2; ++c) async::fence_operand(acc[r][c]);
      async::wgmma_fence();
      const uint64_t da = da0 + ((buf * C::kABuf) >> 4);
      const uint64_t dx = dx0 + ((slot * C::kStage + kk * C::kBox) >> 4);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < R; ++r) wg::Wgmma<T, BM>::mma(acc[r], da + ((r * C::kATile) >> 4) + 2 * j, dx + 2 * j);
      async::wgmma_commit();
    };
    if (nk > 0) {
      // position: slot i of this CTA's sequence = ring slot `slot`, `phase` = its fill parity
      int i = 0, slot = 0, phase = 0, kk = 0, buf = 0;
      int prev_slot = -1;  // a ring slot whose last k-tile's MMAs may still run
      async::mbar_wait(&full[0], 0);
      decode(smem, 0, 0);
      for (;;) {
        issue(slot, kk, buf);
        async::wgmma_wait<1>();  // the previous k-tile's MMAs have completed: its A buffer is free
        if (prev_slot >= 0 && lane == 0) async::mbar_arrive(&empty[prev_slot]);
        prev_slot = -1;
        if (++kk == ks) {  // k-tile (i, kk) was its slot's last
          prev_slot = slot;
          kk = 0;
          if (++i == nk) break;
          if (++slot == C::kStages) {
            slot = 0;
            phase ^= 1;
          }
          async::mbar_wait(&full[slot], phase);
        }
        buf ^= 1;
        decode(smem + slot * C::kStage, kk, buf);
      }
      async::wgmma_wait<0>();
      if (prev_slot >= 0 && lane == 0) async::mbar_arrive(&empty[prev_slot]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < BM / 2; ++c) async::fence_operand(acc[r][c]);
    // the partial tile [BM tokens][BN rows] (FP32) over the ring: every slot has been consumed
    async::named_sync(1, C::kWarps * 32);
    float* part = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int nb = 0; nb < BM / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int n = 64 * (wg * R + r) + 16 * wi + g + 8 * (c >> 1);
          const int m = 8 * nb + 2 * q + (c & 1);
          part[m * C::kPRow + n] = acc[r][4 * nb + c];
        }
  }

  // ---- fixed-order reduction over the cluster's K splits ----
  if (nsplit > 1) async::cluster_sync();
  else __syncthreads();
  {
    const float* part = reinterpret_cast<const float*>(smem);
    const int rows = min(BM, M - m0);
    const int r0 = rows * rank / nsplit, r1 = rows * (rank + 1) / nsplit;
    const float ts = __fmul_rn(tscale[0], 128.0f);
    const int n_base = strip0 * 16;
    constexpr int kQuads = C::kBN / 4;
    for (int e = threadIdx.x; e < (r1 - r0) * kQuads; e += C::kThreads) {
      const int m = r0 + e / kQuads, n = 4 * (e % kQuads);
      const float* p = part + m * C::kPRow + n;
      // fixed order: rank 0, rank 1, ...
      float4 s = nsplit > 1 ? async::ld_peer_f4(p, 0) : *reinterpret_cast<const float4*>(p);
      for (int k = 1; k < nsplit; ++k) {
        const float4 v = async::ld_peer_f4(p, k);
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
// share a GPC: cudaOccupancyMaxActiveClusters, asked once per kernel instantiation and S); else 1.
template <typename T, int BM, typename K>
int choose_split(K kern, int tiles, int groups, int sms) {
  using C = WgCfg<BM>;
  static int active[kMaxSplit + 1] = {};
  for (int S = std::min(kMaxSplit, groups / kMinGroupsPerSplit); S >= 2; --S) {
    if (tiles * S > sms) continue;
    if (active[S] == 0) {
      cudaLaunchConfig_t cfg;
      cudaLaunchAttribute attr[2];
      cluster_launch(cfg, attr, dim3(1, S, 1), C::kThreads, C::kSmem, S, false, nullptr);
      int n = 0;
      active[S] = cudaOccupancyMaxActiveClusters(&n, kern, &cfg) == cudaSuccess && n > 0 ? n : -1;
    }
    if (tiles <= active[S]) return S;
  }
  return 1;
}

template <typename T, int BM>
cudaError_t launch_wgmma_t(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                           const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                           cudaStream_t stream) {
  using C = WgCfg<BM>;
  auto kern = gemm_wgmma_kernel<T, BM>;
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

  const int sms = sm_count();
  const int ntiles = (nstrips + C::kStrips - 1) / C::kStrips;
  const int mtiles = (M + BM - 1) / BM;
  const int split = choose_split<T, BM>(kern, ntiles * mtiles, KT / ks, sms);

  cudaLaunchConfig_t cfg;
  cudaLaunchAttribute attr[2];
  cluster_launch(cfg, attr, dim3(ntiles, split, mtiles), C::kThreads, C::kSmem, split, true, stream);
  return cudaLaunchKernelEx(&cfg, kern, maps, ts, static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid,
                            KT, sbt, wblock, ks);
}

template <typename T>
cudaError_t launch_wgmma_dt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                            const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                            cudaStream_t stream) {
  if (M <= 32) return launch_wgmma_t<T, 32>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 64) return launch_wgmma_t<T, 64>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 128) return launch_wgmma_t<T, 128>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_wgmma_t<T, 256>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
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
