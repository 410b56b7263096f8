// gemm_wgmma.cu: SharQ W4A16 GEMM for M > 24 on Hopper: warpgroup MMAs (wgmma) with both
// operands in shared memory, x_hat by TMA, the FP4 weights decoded to 16 bits in shared memory.
// y = x_hat @ deQ(W)^T * tensor_scale + bias: the contract of gemm.cu (same tiled weights, same
// exact dequantization, FP32 accumulation); only the FP32 summation order differs from the
// mma.sync kernels. Two kernels, 384 threads and 1 CTA an SM each; launch_wgmma_dt picks by M:
//
// Decoder-warp kernel, M <= 128: BM = 64 / 128 tokens x BN = 256 weight rows (16 strips of gemm.cu's
// layout) a CTA; tokens are wgmma's M side, weights its N side (BN). At BM = 64, BN = 224 (14 strips)
// where that fills the SMs in one wave and 256 does not (dec_bn, launch_wgmma_dt).
//  * 3 - BM / 64 decoder warpgroups: decoder warp d owns strips d, d + D, ... (D decoder warps).
//    For each k-tile it waits for the slot's weights (`wfull`) and a free B buffer (`bempty`),
//    decodes the lane's own 16 bytes of each strip (rows g, g+8 at k 16q .. +15, gemm_tile.cuh's
//    exact code-pair decode times the block scale), stores them into the 256 x 64 B tile (K-major,
//    128-byte swizzle: row r's 16-byte chunk c at r * 128 + (c ^ r % 8) * 16, the layout the
//    x_hat boxes have), fences them to the async proxy and arrives on `bfull` (every thread). The
//    decoders never wait for an MMA: they work up to kBStages - 1 k-tiles ahead.
//  * BM / 64 MMA warpgroups: warpgroup w computes tokens 64w .. +63 against all 256 rows: per
//    k-tile 4 x wgmma.m64n256k16 (A = its own 64-row x_hat box, B = the decoded tile; +32 bytes a
//    k16 step), one commit group; wgmma.wait_group 1 after issuing k-tile t retires t - 1 and
//    frees its B buffer (`bempty`). 128 FP32 accumulators a thread.
//  * TMA requests come from the MMA warpgroups' leader threads (a producer warp would cost the
//    registers: see DecCfg): a ring slot holds kKP consecutive 64-k tiles (2 at BM = 64, 1 at
//    128), the CTA's strips' weight tiles (3-D map [strips][KT][512 B] -> [16][kKP][512 B]) and
//    scale bytes on `wfull` (first warpgroup's leader), and each warpgroup's kKP x_hat boxes
//    [64 rows][64 k] (128-byte swizzle) on its `xfull`. The first kStages slots' weights go out
//    before griddepcontrol.wait (they do not depend on the preparation kernel that writes x_hat).
//    A warpgroup refills its part of a slot once it retired the slot's last k-tile: the decoders
//    were done with the slot when they filled that k-tile's B tile, so no barrier is needed for it.
//    Why 2 k-tiles a slot: see DecCfg (a TMA ring's time goes with its slot cycles, not its bytes).
//  Why (benchmarks/results/kernels-H200-wgmma-dec.json): the token-wide design below, used at
//  every M before, decodes inside the MMA warpgroups and publishes each tile with a warpgroup
//  barrier; at M <= 64 its warps issued an instruction every 9 cycles and the GEMM moved 1.2 TB/s.
//
// Token-wide kernel, M > 128: 256 tokens x 128 weight rows a CTA; weights are wgmma's M side (64
// rows a consumer warpgroup), tokens its N side (256), so one decode serves 256 tokens. 2 consumer
// warpgroups decode k-tile t + 1 of their 4 strips into the other of their two 64 x 64 A tiles
// (same placement and swizzle) while the MMAs of t run, publish it with fence.proxy.async + a
// warpgroup barrier and issue 4 x wgmma.m64n256k16; a producer warpgroup (one thread) keeps the
// ring full (x_hat box [256 rows][64 k], weights, scales on one `full` mbarrier; `empty`: one
// arrival a consumer warp). A stream-K form (persistent CTAs over tile x k-tile units, partial tiles
// through a global workspace with per-CTA flags, the owner adding them in CTA order) was built and
// measured slower where it should have won (gate_up at M = 256: 114 vs 105 us; kernels-H200-stream-k.json,
// the code: commit 61df8d3). A from registers instead (register-source wgmma, no A tiles) was
// measured twice on an H200 and lost both times: 6% at M = 256 as the first version of this kernel
// (kernels-H200-wgmma-ss.json, t0), 1-8% with 2 fragment sets and 0-3% with 4 in natural k order
// from 64-byte-swizzled weight tiles (kernels-H200-wide-rs-ab.json; the code: commit c59c6c2).
// Also measured slower (kernels-H200-wide-profile.json: ncu, tensor pipe 76% busy here against
// cuBLAS BF16's 95% on the same tile): x_hat multicast over 2-CTA clusters (commit f6c141f) and
// decoding two k-tiles ahead with separate x_hat and weight rings (commit 3be107d). And a
// persistent form (the next tile's loads under the epilogue, outputs from registers; bitwise equal
// to this kernel): 8-10% slower at M = 1024 with a static tile schedule, 4% with a dynamic one
// (kernels-H200-wide-persistent.json; the code: commit c7be86e).
//
// x_hat boxes, both kernels: 64 rows a decoder-warp MMA warpgroup, 256 a token-wide CTA; the tokens'
// last box brings only its rows rounded up to 8 (maps.xt, x_tail_rows), not a box zero-filled past M.
//
// Split-K over a thread-block cluster (1 x S x 1), both kernels: S is the largest cluster size <= 8
// whose S x tiles CTAs all fit at once (cudaOccupancyMaxActiveClusters), else 1. CTA rank r takes
// k-tiles [r KT / S, (r+1) KT / S) (from a start rotated by the tile index). After the main loop
// each CTA stores its FP32 partial tile in its own shared memory, and rank r reduces token rows
// [r rows / S, (r+1) rows / S) over the ranks in a fixed order through distributed shared
// memory: deterministic, no workspace, no atomics. Then * tensor_scale * 2^7, + bias, one rounding.
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

constexpr int kTileBytes = 512;          // one 16 x 64 weight tile (layout.py)
constexpr int kProducerRegs = 40;        // the token-wide kernel's producer registers after setmaxnreg
constexpr int kScaleSlot = 64;           // scale bytes of a strip's tile (at most)
constexpr int kSmemBudget = 224 * 1024;  // ring + decoded tiles (of 227 KB a CTA)
constexpr int kThreads = 384;            // 3 warpgroups: 168 registers a thread (see DecCfg)
constexpr int kMaxSplit = 8;             // portable cluster size
constexpr int kMinTilesPerSplit = 2;     // k-tiles a split at least
constexpr int kMaxDevices = 64;          // devices a process may launch on (per-device opt-ins)

// The three tensor maps of a launch (host-encoded): x_hat [M][K] boxes {64, kXRows} (128-byte
// swizzle), weights [strips][KT][128 u32] boxes {128, kKP, kStrips}, scales [strips][KT][sbt] boxes
// {sbt, kKP, kStrips} (kKP k-tiles a ring slot); strips past N, k-tiles past KT and rows past M
// arrive as zeros.
struct WgMaps {
  CUtensorMap x, w, s;
  CUtensorMap xt;  // the last x_hat box of the tokens: x_tail_rows(M, box) rows
};

// x_hat rows the last box of M tokens brings (maps.xt; box = the kernel's box rows: 64 a decoder-warp
// MMA warpgroup, 256 the token-wide kernel): its rows rounded up to the 8-row swizzle atom instead of
// the whole box (SHARQ_XTAIL=0: the whole box, the A/B's baseline). A box reaching past M is
// zero-filled by the TMA unit, and that costs: on an H200, gate_up's GEMM at M = 129 took 139 us
// with 256-row boxes against 98 with 136 rows (102 at M = 256; session 36's A/B,
// kernels-H200-stream-k.json). Rows past the box keep stale shared memory: they only feed token
// columns >= M, which are never stored.
#ifndef SHARQ_XTAIL
#define SHARQ_XTAIL 1
#endif
__host__ __device__ __forceinline__ int x_tail_rows(int M, int box) {
  const int rows = (M - (M - 1) / box * box + 7) / 8 * 8;  // the last box's rows, rounded up to 8
  return SHARQ_XTAIL && rows < box ? rows : box;
}

// A CTA's k-tiles under split-K, in groups of G consecutive k-tiles (the decoder-warp kernel's
// DecCfg::kKGroup, a multiple of its k-tiles a ring slot; the token-wide kernel 1): groups [g0, g0 + ng) of
// ceil(KT / G), visited from a start rotated by the tile index (CTAs that run at the same time
// then read different k); k-tile i of the CTA's sequence is k-tile i % G of its group i / G.
// nk = ng * G k-tiles: when G does not divide KT, the last group's k-tiles past KT are read by
// the TMA unit as zeros (weights, scales and x_hat alike) and add exact zeros.
template <int G>
struct KRange {
  int t0, nk, rot;
  __device__ KRange(int KT) {
    const int rank = blockIdx.y, nsplit = gridDim.y;  // cluster (1, S, 1): rank = blockIdx.y
    const int groups = (KT + G - 1) / G;
    const int g0 = (int)((int64_t)groups * rank / nsplit);
    const int ng = (int)((int64_t)groups * (rank + 1) / nsplit) - g0;
    t0 = g0 * G;
    nk = ng * G;
    rot = ng > 0 ? (int)((blockIdx.x * 7u + blockIdx.z * 3u) % (unsigned)ng) * G : 0;
  }
  __device__ int operator()(int i) const { return t0 + (i + rot >= nk ? i + rot - nk : i + rot); }
};

// Epilogue of both kernels, after each CTA stored its FP32 partial tile [BM tokens][PROW floats]
// at smem: rank r of the cluster reduces token rows [r rows / S, (r+1) rows / S) over the ranks in
// a fixed order (rank 0, 1, ...) through distributed shared memory (deterministic, no workspace,
// no atomics), then * tensor_scale * 2^7, + bias, one rounding.
template <typename T, int BM, int BN, int PROW>
__device__ __forceinline__ void reduce_store(const uint8_t* smem, int M, int m0, int n_base, int n_valid,
                                             const float* tscale, const T* bias, T* y, int64_t ys) {
  const int rank = blockIdx.y, nsplit = gridDim.y;
  if (nsplit > 1) async::cluster_sync();
  else __syncthreads();
  const float* part = reinterpret_cast<const float*>(smem);
  const int rows = min(BM, M - m0);
  const int r0 = rows * rank / nsplit, r1 = rows * (rank + 1) / nsplit;
  const float ts = __fmul_rn(tscale[0], 128.0f);
  constexpr int kQuads = BN / 4;
  for (int e = threadIdx.x; e < (r1 - r0) * kQuads; e += kThreads) {
    const int m = r0 + e / kQuads, n = 4 * (e % kQuads);
    const float* p = part + m * PROW + n;
    const float4 s = async::add_peers_f4(nsplit > 1 ? async::ld_peer_f4(p, 0) : *reinterpret_cast<const float4*>(p),
                                         p, nsplit);
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
  if (nsplit > 1) async::cluster_sync();  // peers may still read this CTA's partial tile
}

// The lane's 16 code bytes of a strip's tile (st + wofs) with its scale pair (st + sofs) ->
// e2m1 * s * 2^-7 (exact) in 16 bits, word i stored at dst + off[i]; w and s16 loaded by the caller.
template <typename T>
__device__ __forceinline__ void decode_strip(const uint4& w, uint32_t s16, uint8_t* dst, const uint32_t (&off)[4]) {
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
    *reinterpret_cast<uint4*>(dst + off[u]) = o;
  }
}

// ============================== the decoder-warp kernel (M <= 128) ==============================
// BM (64 / 128) tokens x BN (256, or 224 at BM = 64: dec_bn) weight rows a CTA: BM / 64 MMA
// warpgroups (64 tokens each, BN / 2 FP32 accumulators a thread) and the rest of the 3
// warpgroups decoding.
#ifndef SHARQ_DEC_KP
#define SHARQ_DEC_KP 2
#endif
#ifndef SHARQ_DEC_KGROUP
#define SHARQ_DEC_KGROUP SHARQ_DEC_KP
#endif
template <int BM, int BN = 256>
struct DecCfg {
  // k-tiles a ring slot: 2 at BM = 64 (BM = 128's two x_hat boxes a k-tile leave room for 1).
  // A TMA ring alone moves gate_up's bytes at 224 rows a CTA in 20.3 us with 2 k-tiles behind each
  // mbarrier phase against 32.8 with 1, at any depth (tools/gpu/tma_ring_bench.cu, H200); the
  // kernel gains 3% at 64 rows (docs/KERNELS-HISTORY.md, session 41). kKGroup: the k-tiles the split and
  // the rotation keep together (KRange); SHARQ_DEC_KP=1 SHARQ_DEC_KGROUP=2 builds 1-k-tile slots
  // in the same k order (the bitwise A/B of this change).
  static constexpr int kKP = BM == 64 ? SHARQ_DEC_KP : 1;
  static constexpr int kKGroup = BM == 64 ? SHARQ_DEC_KGROUP : 1;
  static_assert(kKGroup % kKP == 0, "a slot's k-tiles are consecutive");
  static constexpr int kBN = BN;            // weight rows a CTA: wgmma's N
  static constexpr int kStrips = kBN / 16;  // 16-row strips a CTA
  static constexpr int kXRows = 64;         // x_hat box rows: one MMA warpgroup's tokens
  static constexpr int kMmaWGs = BM / 64;
  // Registers: an MMA thread needs 128 accumulators + ~25, and ptxas compiles the whole kernel to
  // what 1 CTA can have (setmaxnreg cannot raise it): 168 a thread with 3 warpgroups (each SM
  // sub-partition's 16K registers hold 3 warps of 168; a 13th warp would leave 128).
  static constexpr int kDecWarps = 4 * (3 - kMmaWGs);  // warpgroups 0 (and 1 at BM = 64)
  static constexpr int kDecThreads = 32 * kDecWarps;
  static constexpr int kStripsPerWarp = (kStrips + kDecWarps - 1) / kDecWarps;
  static constexpr bool kEvenStrips = kStrips % kDecWarps == 0;  // else the last warps hold one fewer
  static constexpr int kMma0 = kDecWarps;  // the first MMA warp
  static constexpr int kBox = kXRows * 128;              // one x_hat box: 64 rows of 64 16-bit values
  // a slot: x_hat [kKP][warpgroup][64 rows][128 B], weights [strip][kKP][512 B], scales
  // [strip][kKP][sbt] (the 3-D boxes {128 u32, kKP, strips} and {sbt, kKP, strips})
  static constexpr int kXBytes = kKP * kMmaWGs * kBox;
  static constexpr int kWBytes = kKP * kStrips * kTileBytes;
  static constexpr int kSBytes = kKP * kStrips * kScaleSlot;
  static constexpr int kStage = (kXBytes + kWBytes + kSBytes + 1023) / 1024 * 1024;
  static constexpr int kBTile = kBN * 128;  // a decoded B tile: BN rows x 64 k, 16-bit
  static constexpr int kBStages = 3;        // decoded tiles in flight: the decoders' lead
  static constexpr int kStages0 = (kSmemBudget - kBStages * kBTile) / kStage;
  static constexpr int kStages = kStages0 < 8 ? kStages0 : 8;
  static constexpr int kRing = kStages * kStage;
  static constexpr int kPRow = kBN + 8;  // partial-tile row (floats), padded: float2 stores conflict-free
  static constexpr int kPartial = BM * kPRow * 4;
  static constexpr int kSmem = (kRing + kBStages * kBTile > kPartial ? kRing + kBStages * kBTile : kPartial) + 1024;
  static_assert(BM == 64 || BM == 128, "token tile");
  static_assert(BN == 256 || (BN == 224 && BM == 64), "weight rows a CTA (wgmma_ops.cuh's N)");
  // the decoders work up to kBStages - 1 k-tiles ahead of the MMAs, in slots filled ahead
  static_assert(kStages * kKP >= kBStages + 2, "ring too shallow");
};
static_assert(DecCfg<64>::kBN == kGemmDecTileRows, "gemm.cu's 17..32-row rule counts these tiles (sharq_kernels.h)");

template <typename T, int BM, int BN = 256>
__global__ void __launch_bounds__(kThreads, 1)
gemm_wgmma_dec_kernel(const __grid_constant__ WgMaps maps, const float* __restrict__ tscale,
                      const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int KT,
                      int sbt, int wblock) {
  using C = DecCfg<BM, BN>;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t wfull[C::kStages], xfull[C::kMmaWGs][C::kStages];
  __shared__ __align__(8) uint64_t bfull[C::kBStages], bempty[C::kBStages];
  uint8_t* smem = smem_raw + ((1024 - (async::smem_u32(smem_raw) & 1023)) & 1023);
  uint8_t* const btiles = smem + C::kRing;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const KRange<C::kKGroup> ktile(KT);
  const int nk = ktile.nk;
  const int strip0 = blockIdx.x * C::kStrips;
  const int m0 = blockIdx.z * BM;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      async::mbar_init(&wfull[s], 1);
      for (int w = 0; w < C::kMmaWGs; ++w) async::mbar_init(&xfull[w][s], 1);
    }
    for (int b = 0; b < C::kBStages; ++b) {
      async::mbar_init(&bfull[b], C::kDecThreads);
      async::mbar_init(&bempty[b], C::kMmaWGs);
    }
    async::mbar_fence_init();
  }
  __syncthreads();

  if (warp < C::kMma0) {
    // ---- decoders ----
    constexpr int R = C::kStripsPerWarp;
    const int g = lane >> 2, q = lane & 3;
    // per strip j of the warp (strip s = warp + kDecWarps j of the CTA's): byte offsets inside a
    // ring slot of the lane's 16 code bytes and of its scale pair (s_g, s_g+8), and inside a B
    // tile of its word i (row g + 8 (i & 1), k 16q + 8 (i >> 1) .. +7) -> its 16-byte chunk of
    // the swizzled tile (row 16 s + g (+8): r % 8 = g)
    uint32_t wofs[R], sofs[R], boff[R][4];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int s = warp + C::kDecWarps * j;
      wofs[j] = C::kXBytes + s * C::kKP * kTileBytes + lane * 16;
      sofs[j] = C::kXBytes + C::kWBytes + s * C::kKP * sbt + (wblock == 32 ? (q >> 1) : q) * 16 + 2 * g;
#pragma unroll
      for (int i = 0; i < 4; ++i) boff[j][i] = (16 * s + g + 8 * (i & 1)) * 128 + (((2 * q + (i >> 1)) ^ g) * 16);
    }
    int slot = 0, phase = 0, b = 0, bphase = 0, sub = 0;
    for (int i = 0; i < nk; ++i) {
      if (sub == 0) async::mbar_wait(&wfull[slot], phase);
      async::mbar_wait(&bempty[b], bphase ^ 1);
      // k-tile `sub` of the slot: its weight tiles at sub * 512 B, its scale bytes at sub * sbt
      const uint8_t* stw = smem + slot * C::kStage + sub * kTileBytes;
      const uint8_t* sts = smem + slot * C::kStage + sub * sbt;
      uint8_t* bt = btiles + b * C::kBTile;
      // all of the lane's code words and scales first (the stores below could alias them for the
      // compiler, which would otherwise load strip j + 1 only after strip j's stores)
      uint4 w[R];
      uint32_t s16[R];
#pragma unroll
      for (int j = 0; j < R; ++j) {
        if (!C::kEvenStrips && warp + C::kDecWarps * j >= C::kStrips) continue;  // BN = 224: 14 strips on 8 warps
        w[j] = *reinterpret_cast<const uint4*>(stw + wofs[j]);
        s16[j] = *reinterpret_cast<const uint16_t*>(sts + sofs[j]);
      }
#pragma unroll
      for (int j = 0; j < R; ++j)
        if (C::kEvenStrips || warp + C::kDecWarps * j < C::kStrips) decode_strip<T>(w[j], s16[j], bt, boff[j]);
      async::fence_proxy_async_smem();  // this thread's stores -> the MMAs' async-proxy reads
      async::mbar_arrive(&bfull[b]);
      if (++sub == C::kKP) {
        sub = 0;
        if (++slot == C::kStages) {
          slot = 0;
          phase ^= 1;
        }
      }
      if (++b == C::kBStages) {
        b = 0;
        bphase ^= 1;
      }
    }
  } else {
    // ---- MMA warpgroups; each one's leader thread issues its own x_hat boxes, the first one's
    // also the weights and scales ----
    const int mw = (warp - C::kMma0) >> 2, wi = warp & 3, g = lane >> 2, q = lane & 3;
    const bool leader = (threadIdx.x & 127) == 0;
    const uint32_t wtx = (uint32_t)(C::kKP * C::kStrips * (kTileBytes + sbt));
    // slot group u of this CTA's sequence (its k-tiles u kKP ..) into ring slot u % kStages
    auto issue_w = [&](int u) {
      const int slot = u % C::kStages, t = ktile(u * C::kKP);
      uint8_t* st = smem + slot * C::kStage;
      async::mbar_arrive_expect_tx(&wfull[slot], wtx);
      async::tma_load_3d(st + C::kXBytes, &maps.w, 0, t, strip0, &wfull[slot]);
      async::tma_load_3d(st + C::kXBytes + C::kWBytes, &maps.s, 0, t, strip0, &wfull[slot]);
    };
    uint8_t* const xbox = smem + mw * C::kBox;  // the warpgroup's x_hat box in slot 0
    uint64_t* const xbar = xfull[mw];
    const int xrow = m0 + 64 * mw;
    // the tokens' last box when it is short (this warpgroup's rows end before 64): x_tail_rows(M, 64)
    // rows (maps.xt)
    const bool xtail = M - xrow < 64;
    const uint32_t xtx = xtail ? (uint32_t)x_tail_rows(M, 64) * 128u : (uint32_t)C::kBox;
    auto issue_x = [&](int u) {
      const int slot = u % C::kStages;
      async::mbar_arrive_expect_tx(&xbar[slot], C::kKP * xtx);
#pragma unroll
      for (int sub = 0; sub < C::kKP; ++sub)
        async::tma_load_2d(xbox + slot * C::kStage + sub * C::kMmaWGs * C::kBox, xtail ? &maps.xt : &maps.x,
                           64 * ktile(u * C::kKP + sub), xrow, &xbar[slot]);
    };
    const int ng = nk / C::kKP;  // slot groups
    if (leader) {
      const int pro = min(ng, C::kStages);
      if (mw == 0)
        for (int i = 0; i < pro; ++i) issue_w(i);
      async::pdl_wait();  // x_hat is written by the preceding kernel
      for (int i = 0; i < pro; ++i) issue_x(i);
    }
    float acc[C::kBN / 2];
#pragma unroll
    for (int c = 0; c < C::kBN / 2; ++c) acc[c] = 0.0f;
    // A: the warpgroup's x_hat box of the slot; B: the decoded tile
    const uint64_t dx0 = async::desc_sw128(xbox), db0 = async::desc_sw128(btiles);
    int slot = 0, phase = 0, b = 0, bphase = 0, prev_b = -1, sub = 0;
    for (int i = 0; i < nk; ++i) {
      if (sub == 0) async::mbar_wait(&xbar[slot], phase);
      async::mbar_wait(&bfull[b], bphase);
#pragma unroll
      for (int c = 0; c < C::kBN / 2; ++c) async::fence_operand(acc[c]);
      async::wgmma_fence();
      const uint64_t dx = dx0 + ((slot * C::kStage + sub * C::kMmaWGs * C::kBox) >> 4),
                     db = db0 + ((b * C::kBTile) >> 4);
#pragma unroll
      for (int j = 0; j < 4; ++j) wg::Wgmma<T, C::kBN>::mma(acc, dx + 2 * j, db + 2 * j);
      async::wgmma_commit();
      async::wgmma_wait<1>();  // k-tile i - 1's MMAs have completed: its B tile and slot are free
      if (prev_b >= 0 && leader) {
        async::mbar_arrive(&bempty[prev_b]);
        // k-tile i - 1 was its slot's last: refill the slot (the decoders were done with its
        // weights when they filled its B tile, and this warpgroup is done with its x_hat boxes)
        if (sub == 0) {
          const int next = (i - 1) / C::kKP + C::kStages;
          if (next < ng) {
            if (mw == 0) issue_w(next);
            issue_x(next);
          }
        }
      }
      prev_b = b;
      if (++sub == C::kKP) {
        sub = 0;
        if (++slot == C::kStages) {
          slot = 0;
          phase ^= 1;
        }
      }
      if (++b == C::kBStages) {
        b = 0;
        bphase ^= 1;
      }
    }
    async::wgmma_wait<0>();
#pragma unroll
    for (int c = 0; c < C::kBN / 2; ++c) async::fence_operand(acc[c]);
    // the partial tile [BM tokens][BN rows] (FP32) over the ring: every slot and B tile has been
    // consumed (the decoders finished before the last MMAs could start); the other MMA
    // warpgroup's MMAs may still read them until this barrier
    if (C::kMmaWGs > 1) async::named_sync(1, 128 * C::kMmaWGs);
    float* part = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int nb = 0; nb < C::kBN / 8; ++nb)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = 64 * mw + 16 * wi + g + 8 * h, n = 8 * nb + 2 * q;
        *reinterpret_cast<float2*>(part + m * C::kPRow + n) = make_float2(acc[4 * nb + 2 * h], acc[4 * nb + 2 * h + 1]);
      }
  }
  reduce_store<T, BM, C::kBN, C::kPRow>(smem, M, m0, strip0 * 16, n_valid, tscale, bias, y, ys);
}

// ============================== the token-wide kernel (M > 128) ==============================
// 256 tokens x 128 weight rows a CTA: 2 consumer warpgroups, each decoding its own 64 weight rows
// into shared memory between its MMAs (wgmma M = 64 rows, N = the 256 tokens: one decode serves
// 256 tokens), and a producer warpgroup (one thread works). The kernel every M used before the
// decoder-warp kernel, kept as it was measured (same SASS as 8c3cb0a's BM = 256 instantiation):
// hence BM as a template parameter, 1 sub-tile and 1 k-tile a slot as constants of its former
// per-BM choices, and ks passed at run time. Instantiated at BM = 256 only.
template <int BM>
struct WideCfg {
  static constexpr int kKP = 1;                    // k-tiles a ring slot (the weight and scale boxes)
  static constexpr int kSubs = 1;                  // 64-row sub-tiles a warpgroup
  static constexpr int kWGs = 2;                   // consumer warpgroups
  static constexpr int kWarps = 4 * kWGs;          // consumer warps
  static constexpr int kThreads = 128 * kWGs + 128;  // + the producer warpgroup (one thread works)
  static_assert(kThreads == sharq::kThreads, "launch shape");
  // setmaxnreg moves registers from the producer to the consumers within the CTA's launch
  // allocation (the release must cover the increase, or setmaxnreg.inc waits forever); ptxas
  // compiles the kernel to the launch allocation (168) all the same.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kRegs = (kLaunchRegs * kThreads - 128 * kProducerRegs) / (128 * kWGs) / 8 * 8;
  static_assert(kWGs * 128 * kRegs + 128 * kProducerRegs <= kLaunchRegs * kThreads, "setmaxnreg pool");
  static constexpr int kStrips = 4 * kWGs * kSubs;  // 16-row strips a CTA, kSubs a consumer warp
  static constexpr int kBN = 16 * kStrips;
  static constexpr int kXRows = BM;                 // the x_hat box: all BM tokens
  static constexpr int kSlotUsers = kWarps;  // every consumer warp reads every slot
  static constexpr int kKs = 1;              // k-tiles a ring slot
  static constexpr int kBox = BM * 128;      // one x_hat box: BM rows of 64 16-bit values
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
  // each consumer warpgroup holds at most 2 slots (the one its MMAs read, the one it decodes) while
  // the producer needs one free: no deadlock with >= 2 x 2 + 1 slots
  static_assert(kStages >= 5, "ring too shallow");
};

template <typename T, int BM>
__global__ void __launch_bounds__(WideCfg<BM>::kThreads, 1)
gemm_wgmma_wide_kernel(const __grid_constant__ WgMaps maps, const float* __restrict__ tscale,
                       const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid, int KT,
                       int sbt, int wblock, int ks /* k-tiles a ring slot: WideCfg::kKs, passed at run time */) {
  using C = WideCfg<BM>;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t full[C::kStages], empty[C::kStages];
  uint8_t* smem = smem_raw + ((1024 - (async::smem_u32(smem_raw) & 1023)) & 1023);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // this CTA's k-groups (ks tiles each; KT % ks == 0)
  const KRange<1> group_of(KT / ks);
  const int nk = group_of.nk;
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
      // the last m-tile, when it is short: boxes of x_tail_rows(M, BM) rows (maps.xt)
      const bool tail = blockIdx.z == gridDim.z - 1 && x_tail_rows(M, BM) < BM;
      const uint32_t tx =
          (uint32_t)(ks * (C::kStrips * (kTileBytes + sbt) + (tail ? x_tail_rows(M, BM) * 128 : C::kBox)));
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
            async::tma_load_2d(smem + slot * C::kStage + kk * C::kBox, tail ? &maps.xt : &maps.x, 64 * (t + kk), m0,
                               &full[slot]);
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
      for (int r = 0; r < R; ++r)
        decode_strip<T>(*reinterpret_cast<const uint4*>(st + wofs[r] + kk * kTileBytes),
                        *reinterpret_cast<const uint16_t*>(st + sofs[r] + kk * sbt), dst + r * C::kATile, aoff);
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

  reduce_store<T, BM, C::kBN, C::kPRow>(smem, M, m0, strip0 * 16, n_valid, tscale, bias, y, ys);
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

// A launch of kThreads-thread CTAs with `smem` dynamic shared memory as clusters of 1 x S x 1
// (split-K), optionally with programmatic dependent launch; attr must outlive cfg.
void cluster_launch(cudaLaunchConfig_t& cfg, cudaLaunchAttribute (&attr)[2], dim3 grid, int smem, int S, bool pdl,
                    cudaStream_t stream) {
  cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
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

// Split-K: the largest cluster size S (<= 8, >= 2 k-tiles a split) whose S x tiles CTAs fit
// the GPU in one wave, counting only clusters the hardware can co-schedule (cluster CTAs must
// share a GPC: cudaOccupancyMaxActiveClusters, asked once per kernel instantiation and S); else 1.
template <typename C, typename K>
int choose_split(K kern, int tiles, int KT, int sms) {
  static int active[kMaxSplit + 1] = {};
  for (int S = std::min(kMaxSplit, KT / kMinTilesPerSplit); S >= 2; --S) {
    if (tiles * S > sms) continue;
    if (active[S] == 0) {
      cudaLaunchConfig_t cfg;
      cudaLaunchAttribute attr[2];
      cluster_launch(cfg, attr, dim3(1, S, 1), C::kSmem, S, false, nullptr);
      int n = 0;
      active[S] = cudaOccupancyMaxActiveClusters(&n, kern, &cfg) == cudaSuccess && n > 0 ? n : -1;
    }
    if (tiles <= active[S]) return S;
  }
  return 1;
}

// One launch of kernel `kern` with configuration C (BM tokens x C::kBN rows a CTA).
template <typename T, int BM, typename C, typename Kern, typename... Extra>
cudaError_t launch_wgmma_cfg(Kern kern, const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                             const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                             cudaStream_t stream, Extra... extra) {
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
  WgMaps maps;
  for (int tail = 0; tail < 2; ++tail) {  // maps.x, then maps.xt (the tokens' last box: x_tail_rows)
    const cuuint64_t gdim[2] = {(cuuint64_t)K, (cuuint64_t)M};
    const cuuint64_t gstride[1] = {(cuuint64_t)xs * sizeof(T)};
    const cuuint32_t box[2] = {64, (cuuint32_t)(tail ? x_tail_rows(M, C::kXRows) : C::kXRows)};
    const cuuint32_t estride[2] = {1, 1};
    const CUtensorMapDataType dt =
        std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    if (encode(tail ? &maps.xt : &maps.x, dt, 2, const_cast<void*>(x), gdim, gstride, box, estride,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  {
    const cuuint64_t gdim[3] = {kTileBytes / 4, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {kTileBytes, (cuuint64_t)KT * kTileBytes};
    const cuuint32_t box[3] = {kTileBytes / 4, (cuuint32_t)C::kKP, C::kStrips};
    const cuuint32_t estride[3] = {1, 1, 1};
    if (encode(&maps.w, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<void*>(qw), gdim, gstride, box, estride,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  {
    const cuuint64_t gdim[3] = {(cuuint64_t)sbt, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {(cuuint64_t)sbt, (cuuint64_t)KT * sbt};
    const cuuint32_t box[3] = {(cuuint32_t)sbt, (cuuint32_t)C::kKP, C::kStrips};
    const cuuint32_t estride[3] = {1, 1, 1};
    if (encode(&maps.s, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(sc), gdim, gstride, box, estride,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }

  const int sms = sm_count();
  const int ntiles = (nstrips + C::kStrips - 1) / C::kStrips;
  const int mtiles = (M + BM - 1) / BM;
  const int split = choose_split<C>(kern, ntiles * mtiles, KT, sms);

  cudaLaunchConfig_t cfg;
  cudaLaunchAttribute attr[2];
  cluster_launch(cfg, attr, dim3(ntiles, split, mtiles), C::kSmem, split, true, stream);
  return cudaLaunchKernelEx(&cfg, kern, maps, ts, static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid,
                            KT, sbt, wblock, extra...);
}

// The decoder-warp kernel with BM = 64 for M <= 64 and 128 up to kGemmWgmmaDecMaxM (one token
// tile; sharq_kernels.h), the token-wide kernel (BM = 256, tiles along grid z) above. Same-process
// A/B on an H200 (benchmarks/results/kernels-H200-wgmma-dec.json, session dec3): GEMM sums over
// the 4 Llama-3.1-8B linears, decoder-warp kernel with BM = 128 tiles (t3) / token-wide kernel: 136.8 /
// 169.5 us at M = 96, 141.8 / 172.4 at 128, 245.4 / 233.6 at 192, 248.8 / 221.3 at 256.
//
// Weight rows a CTA of the BM = 64 decoder-warp kernel (dec_bn): 224 where 256-row tiles leave SMs
// idle that 224-row ones fill, without split-K (2 x the 256-row tiles exceed the SMs) and in one
// wave: Llama-3.1-8B gate_up, 1792 strips on 132 SMs: 112 CTAs of 256 rows (20 SMs idle) -> 128 of
// 224. A k-tile's MMAs and shared-memory traffic shrink with the rows (up to 1/8 sooner a CTA;
// measured on an H200: gate_up's GEMM -5 to -8% at M = 17..64, kernels-H200-wgmma-224.json; at
// BM = 128 it was slower: one decoder warpgroup, whose busiest warp keeps 4 strips either way).
// Not the same bits as 256-row tiles: a CTA starts its k-tiles at a rotation of its tile index
// (KRange), so an output's FP32 sum runs in another order (tested against them to that tolerance).
// EXTRA_NVFLAGS=-DSHARQ_WG_BN224=0 builds the A/B's baseline (256 rows always).
#ifndef SHARQ_WG_BN224
#define SHARQ_WG_BN224 1
#endif
int dec_bn(int nstrips, int sms) {
  const int t256 = (nstrips + 15) / 16, t224 = (nstrips + 13) / 14;
  return SHARQ_WG_BN224 && 2 * t256 > sms && t224 <= sms && t224 > t256 ? 224 : 256;
}

template <typename T>
cudaError_t launch_wgmma_dt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                            const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                            cudaStream_t stream) {
  if (M <= 64 && dec_bn(N / 16, sm_count()) == 224)
    return launch_wgmma_cfg<T, 64, DecCfg<64, 224>>(gemm_wgmma_dec_kernel<T, 64, 224>, x, xs, qw, sc, ts, bias, y, ys,
                                                    M, N, n_valid, K, wblock, stream);
  if (M <= 64)
    return launch_wgmma_cfg<T, 64, DecCfg<64>>(gemm_wgmma_dec_kernel<T, 64>, x, xs, qw, sc, ts, bias, y, ys, M, N,
                                               n_valid, K, wblock, stream);
  if (M <= kGemmWgmmaDecMaxM)
    return launch_wgmma_cfg<T, 128, DecCfg<128>>(gemm_wgmma_dec_kernel<T, 128>, x, xs, qw, sc, ts, bias, y, ys, M, N,
                                                 n_valid, K, wblock, stream);
  return launch_wgmma_cfg<T, 256, WideCfg<256>>(gemm_wgmma_wide_kernel<T, 256>, x, xs, qw, sc, ts, bias, y, ys, M, N,
                                                 n_valid, K, wblock, stream, WideCfg<256>::kKs);
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
