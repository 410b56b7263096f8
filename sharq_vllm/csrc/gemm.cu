// gemm.cu: SharQ W4A16 GEMM on Hopper: y = x_hat @ deQ(W)^T * tensor_scale + bias.
//
// Why one 16-bit GEMM: x_hat = deQ(Sq) + deQ(Rq) is formed by the preparation kernel (prep.cu)
// and is (nearly) exact in bf16/fp16; each weight value e2m1 * e4m3 has <= 6 significant bits,
// exact in bf16/fp16. So the backbone and residual products fold into one GEMM with 16-bit
// operands and FP32 accumulation (mma.sync m16n8k16), with no FP8 rounding of either operand.
//
// Prepacked weight layout (built once by sharq_vllm.kernels.layout.tile_weight; N padded to 16):
//   tile (s, t) = rows 16s..16s+15, k 64t..64t+63.  qweight: [N/16][K/64][32 lanes] x 16 bytes.
//   lane L = 4g + q (g = L/4 in 0..7, q = L%4) holds words {w0, w1, w2, w3}:
//     w0 = row 16s+g   k 64t+16q+0..7      w1 = row 16s+g+8 k 64t+16q+0..7
//     w2 = row 16s+g   k 64t+16q+8..15     w3 = row 16s+g+8 k 64t+16q+8..15
//   a word's 8 codes c0..c7 (k order) form 4 pairs p = (c_2p, c_2p+1); their bits are placed
//   (layout.py BIT_POS) so that one rotation and one mask (gemm_tile.cuh decode_bf16; 3
//   instructions for pair 0) give the bf16x2 pair e2m1 * 2^-126, exact, subnormals included;
//   fp16 moves the three magnitude bits up by 3 (e2m1 * 2^-14).
//   scales: [N/16][K/64][16 rows x (64/wblock) blocks] bytes, byte (kb*16 + 2g + h) = E4M3 scale
//   of row 16s+g+8h, local block kb; lane (g, q) reads the u16 (s_g, s_g+8) of kb = 16q/wblock.
// MMA k-permutation: in k16 step j of tile t, lane (g, q) feeds logical k {2q, 2q+1} with
// physical k 64t+16q+4j+{0,1} and logical {2q+8, 2q+9} with 64t+16q+4j+{2,3}, for A (weights)
// and B (x_hat) alike, so the dot product is unchanged while each lane reads its 16 x values
// for a tile as two contiguous 16-byte loads and its 32 weights as one 16-byte load, and uses a
// single scale per row per tile (its 16 k lie in one 16/32-block).
// Dequant: w' = raw * (s * 2^119) (bf16) or raw * (s * 2^7) (fp16) = e2m1 * s * 2^-7, exact
// (products of <= 6 significant bits, all within the normal/subnormal range); the epilogue
// multiplies the FP32 accumulator by tensor_scale * 2^7 and adds the bias, rounding once.
//
// Kernels:
//  * gemm_stream_kernel (M <= 32; MT = 1, 2, 4 row groups of 8): persistent grid (resident CTAs, strips b,
//    b + grid, ...), each warp walks one flat sequence of U-tile steps across its CTA's strips
//    and issues step i+1's weight loads before computing step i (register double buffer, up to
//    128 B a lane in flight, also across strip boundaries); x_hat read at compute time (L1/L2).
//    Launched with programmatic dependent launch: the first weight loads (two steps at MT = 1,
//    one at MT = 2) start while the preparation kernel still runs. The loop is instruction- and
//    dependency-bound, not short of bytes in flight (ncu, benchmarks/results/
//    ncu-H200-decode-stalls.json; a shared-memory ring fed by cp.async.bulk was slower,
//    kernels-H200-decode-variants.json, and so were per-warp cp.async rings and L2 prefetches,
//    kernels-H200-stream-lean.json), so it is kept lean: step positions advance by pointer
//    increments, x_hat loads are unpredicated at immediate offsets, the scale bytes a tile are a
//    template constant, and when K/64 is a multiple of 8U (FULL) no tile is bounds-checked.
//    At MT = 1 a stage is reloaded as soon as it is computed, before the strip epilogue, and the
//    epilogue has one CTA barrier (two reduction buffers), so two steps stay in flight through it
//    (-4% at M = 1..8 with the preparation: kernels-H200-stream-epilogue.json).
//    17..32 rows run MT = 4, or MT = 2 on two 16-row tiles (grid.y = 2) where the wave rule holds.
//    ~63 instructions a tile (MT = 1); 113 / 128 / 128 regs (MT = 1 / 2 / 4; MT = 4 takes 2 tiles a
//    step and keeps <= 24 bytes on the stack in its FULL instantiations), 2 CTAs an SM.
//    At M = 8 / 16 / 24 / 32 with x_frag (XF) it reads x_hat in fragment order (sharq_kernels.h,
//    xhat_fragment_rows): a warp's x_hat load is 512 contiguous bytes, 4 L1 wavefronts instead of 8
//    (-7% with the preparation at M = 16: benchmarks/results/kernels-H200-xhat-frag.json).
//  * gemm_mma_kernel (forced only: the bit-exact twin the tests hold the stream kernel to; MT = 4,
//    8): one CTA (8 warps) per 16-row strip, U tiles' loads before use.
//  Both: warp w takes k-tiles w, w+8, ... (its j-th tile: w + 8j); for M <= 8 it sums tiles of
//  even j and of odd j in two FP32 accumulator sets and adds them at the end (kAcc2Small), above
//  in one; the 8 warps' partial sums are reduced in shared memory in a fixed order
//  (deterministic, no atomics, no workspace; the two kernels give the same bits). Weight
//  traffic: 4.5 bits a weight (0.5 B codes + 1/32 B scale).
//  * M > 32 (17..32 for layers of many strips: gemm_stream_to_max_m): the wgmma kernels (gemm_wgmma.cu).
//  * dequant_kernel (large M, then cuBLAS; sharq_vllm/kernels/dispatch.py): one warp a tile,
//    staged through shared memory so every store is a full 128-byte row segment.
#include "gemm_tile.cuh"
#include "sharq_kernels.h"

#include <algorithm>

namespace sharq {
namespace {

using tile::kWarps;
using tile::ld_stream;
using tile::MmaT;

template <typename T, int MT, int U, bool ACC2 = false>
__global__ void __launch_bounds__(kWarps * 32)
gemm_mma_kernel(const T* __restrict__ x, int64_t xs, const uint4* __restrict__ qw,
                const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid,
                int K, int wblock) {
  __shared__ float red[kWarps][MT][4][32];
  const int strip = blockIdx.x;
  const int m_base = blockIdx.y * 8 * MT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const int KT = K >> 6;
  const int SBT = wblock == 32 ? 32 : 64;
  const uint4* qs = qw + (int64_t)strip * KT * 32 + lane;
  const uint8_t* ss = sc + (int64_t)strip * KT * SBT + ((wblock == 32 ? (q >> 1) : q) * 16 + 2 * g);
  const T* xrow[MT];
  bool mrow[MT];
  tile::x_rows<T, MT>(xrow, mrow, x, xs, m_base, M, g, q);

  float acc[MT][4], acc2[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = acc2[mt][c] = 0.0f;
  static_assert(!ACC2 || U % 2 == 0, "ACC2: the warp's j-th tile is t0 + 8u with j = U i + u, so j % 2 = u % 2");

  for (int t0 = warp; t0 < KT; t0 += kWarps * U) {
    uint4 qv[U];
    uint32_t sv[U];
    uint4 xv[U][MT][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = t0 + kWarps * u;
      if (t < KT) {
        qv[u] = ld_stream(qs + (int64_t)t * 32);
        sv[u] = *reinterpret_cast<const uint16_t*>(ss + (int64_t)t * SBT);
        tile::load_x<T, MT>(xv[u], xrow, mrow, t);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = t0 + kWarps * u;
      if (t < KT) {
        if (ACC2 && (u & 1)) tile::mma_tile<T, MT>(acc2, qv[u], sv[u], xv[u]);
        else tile::mma_tile<T, MT>(acc, qv[u], sv[u], xv[u]);
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) red[warp][mt][c][lane] = ACC2 ? __fadd_rn(acc[mt][c], acc2[mt][c]) : acc[mt][c];
  __syncthreads();
  tile::store_strip<T, MT>(red, strip, m_base, M, n_valid, __fmul_rn(tscale[0], 128.0f), bias, y, ys,
                           threadIdx.x, kWarps * 32);
}

// ---- persistent, software-pipelined stream kernel (decode: M <= 32) -------------------------
// Same tile layout, fragment mapping, dequant and fixed-order reduction as gemm_mma_kernel, but:
//  * persistent grid: CTA b takes strips b, b + gridDim.x, ... (grid = resident CTAs), so there
//    is no CTA launch/teardown per 34 KB strip and no partial last wave of short CTAs;
//  * each warp walks one flat sequence of steps (U tiles of a strip a step, strips back to back)
//    and issues step i+1's weight/scale loads before computing step i (register double buffer):
//    up to 2*U*16 B in flight a lane, including across the strip boundary (while the CTA
//    reduces the finished strip in shared memory);
//  * x_hat is read at compute time (L1/L2 hits: the rows are tiny and shared by all CTAs), so
//    the double buffer costs weight registers only.
constexpr bool kStreamPdl = true;  // programmatic dependent launch of the stream kernel
// M <= 8 (MT = 1): two accumulator sets, a warp's even and odd tiles (its j-th tile, tile
// warp + 8j, into set j % 2), added once at the strip's end: two MMA dependency chains instead of
// one (-1.5% at M = 1 / 8 with the preparation: benchmarks/results/kernels-H200-stream-acc2.json).
// The tile kernel sums the same way for M <= 8 (its ACC2), so the two give the same bits.
// EXTRA_NVFLAGS=-DSHARQ_STREAM_ACC2=0 builds the A/B's baseline (one set at every M).
#ifndef SHARQ_STREAM_ACC2
#define SHARQ_STREAM_ACC2 1
#endif
constexpr bool kAcc2Small = SHARQ_STREAM_ACC2;
// Strip reduction buffers: MT = 1 keeps two, so a strip's epilogue needs one CTA barrier (the
// next strip writes the other buffer) and the step loads issued just before it stay in flight
// through it; MT = 2 / 4 keep one (two barriers; measured no faster there: the A/B of
// benchmarks/results/kernels-H200-stream-epilogue.json).
template <int MT>
constexpr int kStreamRedBufs = MT == 1 ? 2 : 1;

// Both register stages' weight loads before griddepcontrol.wait at MT >= 2 too (as at MT = 1;
// the kernel's prologue below says why).
#ifndef SHARQ_STREAM_PRE2
#define SHARQ_STREAM_PRE2 1
#endif
constexpr bool kStreamPre2 = SHARQ_STREAM_PRE2;

template <typename T, int MT, int U>
struct StreamStage {
  uint4 q[U];
  uint32_t s[U];
};

// XF: x_hat in fragment order (sharq_kernels.h, xhat_fragment_rows; launched only at M = 8 / 16 /
// 24 / 32, whole row groups): lane (g, q)'s 16 values of tile t in row group G at 8 K G + 512 t +
// 32 g + 8 q and + 256 (layout.py, xhat_to_fragments), so each of a warp's two x_hat loads a row
// group and tile reads 512 contiguous bytes: 4 L1 wavefronts where rows read 8 (64 bytes from each
// of 8 rows). A row group past M (the fourth at M = 24) reads group 0, as rows past M read row 0.
template <typename T, int MT, int U, int MINB, bool FULL, int SBT, bool XF = false>
__global__ void __launch_bounds__(kWarps * 32, MINB)
gemm_stream_kernel(const T* __restrict__ x, int64_t xs, const uint4* __restrict__ qw,
                   const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                   const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid,
                   int K, int wblock, int nstrips) {
  constexpr int RB = kStreamRedBufs<MT>;
  __shared__ float red[RB][kWarps][MT][4][32];
  int rbuf = 0;
  const int m_base = blockIdx.y * 8 * MT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const int KT = K >> 6;
  const int soff = (SBT == 32 ? (q >> 1) : q) * 16 + 2 * g;  // SBT: scale bytes a tile (64 / 32: block 16 / 32)
  const int nsteps = (KT + kWarps * U - 1) / (kWarps * U);  // steps a strip (same for all warps)
  const int my_strips = nstrips > (int)blockIdx.x ? (nstrips - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
  const int total = my_strips * nsteps;
  const float ts = __fmul_rn(tscale[0], 128.0f);

  const T* xrow[MT];  // lane's x_hat of tile 0, row group mt
  if constexpr (XF) {  // whole row groups (M % 8 == 0); a group past M (MT >= 2 only) reads group 0
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int grp = (m_base >> 3) + mt;
      xrow[mt] = x + (int64_t)(MT == 1 || 8 * grp < M ? grp : 0) * 8 * K + 32 * g + 8 * q;
    }
  } else {
    bool mrow[MT];
    tile::x_rows<T, MT>(xrow, mrow, x, xs, m_base, M, g, q);
  }
  constexpr int XT = XF ? 512 : 64;  // x_hat elements from one tile to the next (a lane's, row group 0)
  constexpr int XH = XF ? 32 : 1;    // 16-byte units from a lane's first x_hat load of a tile to its second
  constexpr bool ACC2 = kAcc2Small && MT == 1;
  static_assert(!ACC2 || U % 2 == 0, "ACC2: the warp's j-th tile is tb + 8u with j = U s + u, so j % 2 = u % 2");
  float acc[MT][4], acc2[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = acc2[mt][c] = 0.0f;

  // Step i of the CTA: strip blockIdx.x + (i / nsteps) * gridDim.x, tiles warp + 8 (U (i % nsteps)
  // + u). A position carries the lane's code and scale pointers at its first tile and is
  // advanced incrementally (no integer division or 64-bit index arithmetic in the loop). FULL:
  // K/64 is a multiple of 8U (4096, 14336, ...), so no tile needs a bounds check.
  struct Pos {
    int strip, s, tb;  // strip, step in the strip, the warp's first tile of the step
    const uint4* q;    // lane's 16 code bytes of tile tb
    const uint8_t* sp; // lane's scale pair of tile tb
    const T* x;        // lane's x_hat values of tile tb, row group 0 (compute only)
  };
  auto at_strip = [&](Pos& p, int strip) {
    p.strip = strip;
    p.s = 0;
    p.tb = warp;
    p.q = qw + ((int64_t)strip * KT + warp) * 32 + lane;
    p.sp = sc + ((int64_t)strip * KT + warp) * SBT + soff;
    p.x = xrow[0] + XT * warp;
  };
  auto advance = [&](Pos& p) {
    if (++p.s == nsteps) {
      at_strip(p, p.strip + (int)gridDim.x);
    } else {
      p.tb += kWarps * U;
      p.q += kWarps * U * 32;
      p.sp += kWarps * U * SBT;
      p.x += kWarps * U * XT;
    }
  };
  auto load = [&](StreamStage<T, MT, U>& st, const Pos& p) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (FULL || p.tb + kWarps * u < KT) {
        st.q[u] = ld_stream(p.q + kWarps * u * 32);
        st.s[u] = *reinterpret_cast<const uint16_t*>(p.sp + kWarps * u * SBT);
      }
    }
  };
  // x_hat: every lane loads its row group's values unpredicated; a lane whose row is >= M reads
  // row 0 (x_rows clamps it) and feeds MMA columns that are never stored, so the loop has no
  // per-tile predicates, zero fills or 64-bit address arithmetic (tile tb + 8u at + 512u elements
  // of p.x, immediate offsets; row group mt at a loop-invariant distance x_off[mt] from group 0:
  // < 32 rows, < 2^31 elements, bindings.cpp).
  int x_off[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) x_off[mt] = (int)(xrow[mt] - xrow[0]);
  auto compute = [&](const StreamStage<T, MT, U>& st, const Pos& p) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (FULL || p.tb + kWarps * u < KT) {
        uint4 xv[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4* xp = reinterpret_cast<const uint4*>(p.x + x_off[mt] + XT * kWarps * u);
          xv[mt][0] = __ldg(xp);
          xv[mt][1] = __ldg(xp + XH);
        }
        if (ACC2 && (u & 1)) tile::mma_tile<T, MT>(acc2, st.q[u], st.s[u], xv);
        else tile::mma_tile<T, MT>(acc, st.q[u], st.s[u], xv);
      }
    }
  };
  // after the last step of a strip: fixed-order reduction over the 8 warps, epilogue, store
  auto finish = [&](const Pos& p) {
    if (p.s != nsteps - 1) return;
    const int strip = p.strip;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        red[rbuf][warp][mt][c][lane] = ACC2 ? __fadd_rn(acc[mt][c], acc2[mt][c]) : acc[mt][c];
        acc[mt][c] = acc2[mt][c] = 0.0f;
      }
    __syncthreads();
    tile::store_strip<T, MT>(red[rbuf], strip, m_base, M, n_valid, ts, bias, y, ys, threadIdx.x, kWarps * 32);
    // one buffer: wait until it is read before the next strip writes it; two: the next strip
    // writes the other one, and the barrier in its epilogue orders these reads before this one
    // is written again
    if constexpr (RB == 1) __syncthreads();
    rbuf ^= RB - 1;
  };

  StreamStage<T, MT, U> A, B;
  Pos lp, cp;  // the next step to load, to compute
  at_strip(lp, (int)blockIdx.x);
  at_strip(cp, (int)blockIdx.x);
  // Programmatic dependent launch: the weights do not depend on the previous kernel (the
  // preparation writing x_hat), so weight loads are issued before waiting for it (a no-op when
  // launched without the PDL attribute or when the previous kernel has completed): both register
  // stages, i.e. steps 0 and 1. At MT = 1 since commit ab37fb4 (-3.2 us over the four Llama-8B
  // layers at M = 1 with the preparation); at MT = 2 / 4 since session 42 (the preparation's
  // exposed time over the four layers 9.2 -> 5.2-5.8 us at M = 16; preparation + GEMM -4.4% /
  // -3.0% / -0.8% / -1.2% at M = 9 / 16 / 24 / 32, the GEMM alone +1.9% / +1.5% / +0.9% / +0.4%:
  // benchmarks/results/kernels-H200-pre2.json; on 2026-11-30's kernel two stages had made M = 16
  // 5-9% slower: kernels-H200-pdl-prologue.json). Then each stage is reloaded (step s + 2) right
  // after its step s is computed: at MT = 1 before the strip epilogue, at MT = 2 / 4 after it (the
  // order each measured faster: kernels-H200-stream-epilogue.json).
  // EXTRA_NVFLAGS=-DSHARQ_STREAM_PRE2=0 issues step 1's loads after the wait at MT >= 2: the load
  // order of the kernel before session 42, not its machine code (ptxas schedules the two MT = 2 / 4
  // loops differently; the A/B of kernels-H200-pre2.json ran against bca153b's own build).
  constexpr bool kPre2 = MT == 1 || kStreamPre2;
  if (total > 0) {
    load(A, lp);
    advance(lp);
  }
  if (kPre2 && total > 1) {
    load(B, lp);
    advance(lp);
  }
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (!kPre2 && total > 1) {
    load(B, lp);
    advance(lp);
  }
  for (int i = 0; i < total; i += 2) {
    compute(A, cp);
    if (MT == 1 && i + 2 < total) {
      load(A, lp);
      advance(lp);
    }
    finish(cp);
    advance(cp);
    if (MT > 1 && i + 2 < total) {
      load(A, lp);
      advance(lp);
    }
    if (i + 1 >= total) break;
    compute(B, cp);
    if (MT == 1 && i + 3 < total) {
      load(B, lp);
      advance(lp);
    }
    finish(cp);
    advance(cp);
    if (MT > 1 && i + 3 < total) {
      load(B, lp);
      advance(lp);
    }
  }
}

template <typename T, int MT, int U, int MINB>
cudaError_t launch_stream_t(const void* x, int64_t xs, const void* qw, const void* sc,
                            const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                            int n_valid, int K, int wblock, int sms, cudaStream_t stream, bool xf = false) {
  static int per_sm = 0;  // resident CTAs an SM (host query, once per instantiation)
  if (per_sm == 0) {
    // one of the four kernels below stands for all: same launch bounds, no shared memory beyond
    // the same static reduction buffer, registers within the bound (ptxas)
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemm_stream_kernel<T, MT, U, MINB, false, 64>, kWarps * 32, 0) != cudaSuccess || v < 1) v = 1;
    per_sm = v;
  }
  const int nstrips = N / 16;
  const int mtiles = (M + 8 * MT - 1) / (8 * MT);
  // balanced persistent grid: every CTA gets the same number of strips (qkv: 384 strips on
  // 264 slots -> 192 CTAs x 2 strips rather than 120 CTAs doing a second strip alone)
  const int slots = std::max(1, sms * per_sm / mtiles);
  const int per_cta = (nstrips + slots - 1) / slots;
  const int gx = std::max(1, (nstrips + per_cta - 1) / per_cta);
  // PDL: may start while the preceding kernel (the preparation, which triggers its dependents
  // at its start) still runs; the kernel waits (griddepcontrol.wait) before reading x_hat.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(gx, mtiles);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = kStreamPdl ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // every step of every warp is whole when K/64 is a multiple of 8U: no per-tile bounds checks;
  // the scale bytes a tile (64 / 32 for weight blocks 16 / 32) are a constant of the kernel
  const bool full = (K / 64) % (kWarps * U) == 0;
  auto kern = wblock == 32 ? (full ? gemm_stream_kernel<T, MT, U, MINB, true, 32> : gemm_stream_kernel<T, MT, U, MINB, false, 32>)
                           : (full ? gemm_stream_kernel<T, MT, U, MINB, true, 64> : gemm_stream_kernel<T, MT, U, MINB, false, 64>);
  if (xf)  // fragment-ordered x_hat (launch_gemm_mma: whole row groups)
    kern = wblock == 32 ? (full ? gemm_stream_kernel<T, MT, U, MINB, true, 32, true> : gemm_stream_kernel<T, MT, U, MINB, false, 32, true>)
                        : (full ? gemm_stream_kernel<T, MT, U, MINB, true, 64, true> : gemm_stream_kernel<T, MT, U, MINB, false, 64, true>);
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), xs,
                            static_cast<const uint4*>(qw), static_cast<const uint8_t*>(sc), ts,
                            static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid, K,
                            wblock, nstrips);
}

template <typename T, int MT, int U, bool ACC2 = false>
cudaError_t launch_mma_t(const void* x, int64_t xs, const void* qw, const void* sc,
                         const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                         int n_valid, int K, int wblock, cudaStream_t stream) {
  dim3 grid(N / 16, (M + 8 * MT - 1) / (8 * MT));
  gemm_mma_kernel<T, MT, U, ACC2><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), xs, static_cast<const uint4*>(qw), static_cast<const uint8_t*>(sc),
      ts, static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid, K, wblock);
  return cudaGetLastError();
}

// The stream kernel's configuration: U = 4 tiles a step, 2 CTAs an SM (<= 128 registers). The
// sweep that chose it (benchmarks/results/kernels-H200-decode-variants.json, bench --gemm-sweep at
// the commit that had the alternatives): U = 2 with 3 or 4 CTAs an SM and U = 4 with 3 were
// slower at M = 4..16 (more CTAs, fewer bytes in flight a warp), U = 2 / 3 CTAs 5% faster at M = 1.
constexpr int kStreamU = 4;
constexpr int kStreamCtasPerSm = kGemmStreamCtasPerSm;  // sharq_kernels.h (gemm_stream_to_max_m)
// MT = 4 (17 <= M <= 32: four row groups, 16 accumulators and 8 x_hat loads a tile): U tiles a
// step at 2 CTAs an SM, no wave rule (3 CTAs an SM leave it too few registers).
#ifndef SHARQ_STREAM_U4
#define SHARQ_STREAM_U4 2
#endif
constexpr int kStreamU4 = SHARQ_STREAM_U4;
// Wave rule: a layer whose 16-row strips need a second round at 2 CTAs an SM but fit one at 3
// (264 < N/16 <= 396 on 132 SMs: Llama-3.1-8B's qkv, 384 strips) takes U = 2 tiles a step at 3
// CTAs an SM, one strip a CTA, instead of 192 CTAs doing 2 strips each. The per-layer sweep of
// kernels-H200-decode-variants.json measured qkv at M = 1 / 8 / 16: 6.82 / 7.00 / 8.53 us
// against 8.73 / 9.05 / 10.35 (GEMM alone); the other three layers are faster at (4, 2). The
// rule's A/B (kernels-H200-prep-pdl-waves.json): qkv 8.82 -> 7.24 us at M = 1, 10.35 -> 8.51 at
// M = 16. EXTRA_NVFLAGS=-DSHARQ_STREAM_WAVES=0 builds the A/B's baseline.
#ifndef SHARQ_STREAM_WAVES
#define SHARQ_STREAM_WAVES 1
#endif
constexpr bool kStreamWaveRule = SHARQ_STREAM_WAVES;
constexpr int kStreamWaveU = 2;
constexpr int kStreamWaveCtasPerSm = 3;
// The wave rule from 17 to 32 rows too: such a layer runs two 16-row tiles of MT = 2 (grid.y = 2:
// two CTAs stream each weight strip, both resident at once, so the second read can hit L2) at the
// wave configuration (qkv: 384 CTAs of 2 strips on 396 slots, one round) instead of MT = 4's one
// 32-row tile on 2 CTAs an SM (192 CTAs of 2 strips on 264 slots: SMs with two CTAs do 4 strips).
// Same bits (a row's sums do not depend on how rows are grouped). Llama-3.1-8B qkv, preparation +
// GEMM: 16.1 / 16.7 / 18.2 -> 14.9 / 15.4 / 16.2 us at M = 17 / 24 / 32
// (benchmarks/results/kernels-H200-stream-acc2.json, session s4). EXTRA_NVFLAGS=
// -DSHARQ_STREAM_WAVE_MT2=0 builds the A/B's baseline.
#ifndef SHARQ_STREAM_WAVE_MT2
#define SHARQ_STREAM_WAVE_MT2 1
#endif
constexpr bool kStreamWaveRows32 = SHARQ_STREAM_WAVE_MT2;
// The wave rule's layers: strips that need a second round at kStreamCtasPerSm CTAs an SM but fit
// one at kStreamWaveCtasPerSm.
inline bool stream_wave_layer(int nstrips, int sms) {
  return kStreamWaveRule && nstrips > kStreamCtasPerSm * sms && nstrips <= kStreamWaveCtasPerSm * sms;
}

// one MT: the (U, CTAs an SM) configuration the wave rule picks
template <typename T, int MT>
cudaError_t launch_stream_cfg(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                              const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K,
                              int wblock, cudaStream_t stream, bool xf) {
  const int sms = sm_count();
  if (stream_wave_layer(N / 16, sms))
    return launch_stream_t<T, MT, kStreamWaveU, kStreamWaveCtasPerSm>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K,
                                                                      wblock, sms, stream, xf);
  return launch_stream_t<T, MT, kStreamU, kStreamCtasPerSm>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock,
                                                            sms, stream, xf);
}

template <typename T>
cudaError_t launch_stream_mt(const void* x, int64_t xs, const void* qw, const void* sc, const float* ts,
                             const void* bias, void* y, int64_t ys, int M, int N, int n_valid, int K, int wblock,
                             cudaStream_t stream, bool xf) {
  if (M <= 8) return launch_stream_cfg<T, 1>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream, xf);
  if (M <= 16) return launch_stream_cfg<T, 2>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream, xf);
  // 17..32 rows: MT = 4 (one 32-row tile), except where the wave rule holds: there two 16-row
  // tiles of MT = 2 (grid.y = 2) at the wave configuration (kStreamWaveRows32)
  const int sms = sm_count();
  if (kStreamWaveRows32 && stream_wave_layer(N / 16, sms))
    return launch_stream_t<T, 2, kStreamWaveU, kStreamWaveCtasPerSm>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K,
                                                                     wblock, sms, stream, xf);
  return launch_stream_t<T, 4, kStreamU4, kStreamCtasPerSm>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock,
                                                            sms, stream, xf);
}

// The mma.sync kernels: kGemmStream or kGemmTile (launch_gemm_mma resolves kGemmAuto).
template <typename T>
cudaError_t launch_mma_dt(const void* x, int64_t xs, const void* qw, const void* sc,
                          const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                          int n_valid, int K, int wblock, cudaStream_t stream, int variant, bool xf) {
  if (variant == kGemmStream) {
    if (M > kGemmStreamLimitM) return cudaErrorInvalidValue;
    return launch_stream_mt<T>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream, xf);
  }
  if (xf) return cudaErrorInvalidValue;  // the tile kernel reads rows
  if (M <= 8) return launch_mma_t<T, 4, 2, kAcc2Small>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 32) return launch_mma_t<T, 4, 2>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_mma_t<T, 8, 1>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
}

// ---- dequantization to a 16-bit workspace (large-M path: then cuBLAS) -----------------------
// One warp per 16x64 tile (grid-stride over tiles, kDqU tiles' 16-byte loads issued before any
// is used: 64 B in flight a lane). Dequant with the GEMM's bit trick: code pair -> e2m1 * 2^-126
// (bf16) / 2^-14 (fp16) by and/shift/or, times (s * 2^119) / (s * 2^7) = e2m1 * s * 2^-7, times
// 2^7: every step exact (<= 6 significant bits, no overflow/underflow), so w = e2m1 * s exactly,
// as before. The warp stages the 16 x 128 B tile in shared memory (rows padded to 144 B: no
// bank conflicts) and writes it back as 4 fully coalesced 512-byte stores (4 rows of 128 B
// each), so every written 32-byte sector is complete.
constexpr int kDqU = 4;
constexpr int kDqRowPad = 72;  // 16-bit elements per staged row (64 + 8)

template <typename T>
__global__ void __launch_bounds__(256)
dequant_kernel(const uint4* __restrict__ qw, const uint8_t* __restrict__ sc, T* __restrict__ w,
               int N, int K, int wblock) {
  __shared__ __align__(16) T stage[kWarps][16 * kDqRowPad];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const int KT = K >> 6;
  const int64_t ntiles = (int64_t)(N / 16) * KT;
  const int SBT = wblock == 32 ? 32 : 64;
  const int soff = (wblock == 32 ? (q >> 1) : q) * 16 + 2 * g;
  const int64_t nwarps = (int64_t)gridDim.x * kWarps;
  T* st = stage[warp];
  const uint32_t two7 = MmaT<T>::two7();
  for (int64_t t0 = (int64_t)blockIdx.x * kWarps + warp; t0 < ntiles; t0 += nwarps * kDqU) {
    uint4 qv[kDqU];
    uint32_t sv[kDqU];
#pragma unroll
    for (int u = 0; u < kDqU; ++u) {
      const int64_t tile = t0 + nwarps * u;
      if (tile < ntiles) {
        qv[u] = ld_stream(qw + tile * 32 + lane);
        sv[u] = *reinterpret_cast<const uint16_t*>(sc + tile * SBT + soff);
      }
    }
#pragma unroll
    for (int u = 0; u < kDqU; ++u) {
      const int64_t tile = t0 + nwarps * u;
      if (tile >= ntiles) break;  // warp-uniform
      uint32_t sg, sg8;
      MmaT<T>::scales(sv[u], sg, sg8);
      const uint32_t wd[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
      // word i: row g + 8 (i & 1), k 16q + 8 (i >> 1) .. +7
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t sc2 = (i & 1) ? sg8 : sg;
        uint4 o;
        o.x = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::pair(wd[i], 0), sc2), two7);
        o.y = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::pair(wd[i], 1), sc2), two7);
        o.z = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::pair(wd[i], 2), sc2), two7);
        o.w = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::pair(wd[i], 3), sc2), two7);
        *reinterpret_cast<uint4*>(st + (g + 8 * (i & 1)) * kDqRowPad + 16 * q + 8 * (i >> 1)) = o;
      }
      __syncwarp();
      const int64_t s_idx = tile / KT;
      const int t = (int)(tile - s_idx * KT);
      T* dst = w + (s_idx * 16) * (int64_t)K + (int64_t)t * 64;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = 4 * r + (lane >> 3), c8 = lane & 7;
        const uint4 v = *reinterpret_cast<const uint4*>(st + row * kDqRowPad + 8 * c8);
        *reinterpret_cast<uint4*>(dst + (int64_t)row * K + 8 * c8) = v;
      }
      __syncwarp();
    }
  }
}

}  // namespace

cudaError_t launch_gemm_mma(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                            const float* tensor_scale, const void* bias, void* y, int64_t y_stride,
                            int M, int N, int n_valid, int K, int wblock, int dtype,
                            cudaStream_t stream, int variant, int x_frag) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (!xhat_fragment_valid(x_frag)) return cudaErrorInvalidValue;
  if (N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  if (variant != kGemmAuto && variant != kGemmStream && variant != kGemmTile && variant != kGemmWgmma &&
      variant != kGemmWgmmaRs)
    return cudaErrorInvalidValue;
  // kGemmAuto (sharq_kernels.h, GemmAutoMaxM): the stream kernel up to M = 16 (the decode sweep:
  // kernels-H200-decode-variants.json) and up to M = 32 (MT = 4) for layers of at most
  // kGemmStreamMaxRounds rounds of strips over its resident CTAs, the wgmma kernels above. H200,
  // after the preparation (benchmarks/results/kernels-H200-stream-mt4.json): the four Llama-3.1-8B
  // layers at M = 17 / 24 / 32 stream 100.1 / 106.0 / 114.2 us, tile 120.4 / 134.5 / 151.0, wgmma
  // 112.7 / 114.9 / 116.6; per layer the stream kernel loses only gate_up (1792 strips, 6.8 rounds)
  // at M = 24 / 32 (50.1 / 54.8 against wgmma's 48.2 / 49.1; 47.2 / 47.6 at 17), wins o / down (256
  // strips) by 25-35%, ties qkv (384). A wider layer takes the decoder-warp wgmma kernel only where
  // its 256-row tiles fit one wave of the SMs (gate_up's 112 tiles on 132); beyond that its tiles
  // run in a second, part-empty wave and the persistent stream kernel, which spreads the strips over
  // every SM, is faster: Qwen2.5-7B's gate_up (2368 strips, 148 tiles) at M = 17 / 24 / 32 52.8 /
  // 57.7 / 61.1 us against wgmma's 78.5 / 79.5 / 79.6 (benchmarks/results/kernels-H200-Qwen2.5-7B.json).
  if (variant == kGemmAuto) variant = gemm_auto_variant(M, N, sm_count());
  // x_hat in fragment order (where xhat_fragment_rows(M, x_frag)): the stream kernel reads it,
  // contiguous [M, K] (x_stride == K); kGemmAuto takes that kernel at M = 8 / 16 for every N and at
  // 24 / 32 where gemm_stream_to_max_m (callers ask for kXhatFragTo32 only there)
  const bool xf = xhat_fragment_rows(M, x_frag);
  if (xf && (variant != kGemmStream || x_stride != K)) return cudaErrorInvalidValue;
  if (variant == kGemmWgmmaRs)
    return launch_gemm_wgmma_rs(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K,
                                wblock, dtype, stream);
  if (variant == kGemmWgmma)
    return launch_gemm_wgmma(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock,
                             dtype, stream);
  switch (dtype) {
    case kBF16: return launch_mma_dt<__nv_bfloat16>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, variant, xf);
    case kFP16: return launch_mma_dt<__half>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream, variant, xf);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_dequant(const void* qweight, const void* scales, void* w, int N, int K,
                           int wblock, int dtype, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  const int64_t ntiles = (int64_t)(N / 16) * (K / 64);
  const int threads = kWarps * 32;
  // 8 resident CTAs an SM (18 KB smem, <= 64 regs); at most one pass of kDqU tiles a warp short
  const int sms = sm_count();
  const int64_t want = (ntiles + (int64_t)kWarps * kDqU - 1) / ((int64_t)kWarps * kDqU);
  const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)sms * 8));
  switch (dtype) {
    case kBF16:
      dequant_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
          static_cast<const uint4*>(qweight), static_cast<const uint8_t*>(scales),
          static_cast<__nv_bfloat16*>(w), N, K, wblock);
      break;
    case kFP16:
      dequant_kernel<__half><<<blocks, threads, 0, stream>>>(
          static_cast<const uint4*>(qweight), static_cast<const uint8_t*>(scales),
          static_cast<__half*>(w), N, K, wblock);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace sharq
