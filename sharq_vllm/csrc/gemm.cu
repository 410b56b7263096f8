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
//   a word's 8 codes c0..c7 (k order) sit at nibble positions 3,7,2,6,1,5,0,4, so that
//   (word << 4j) has (c_2j, c_2j+1) in the top nibble of its two 16-bit halves, which one
//   and/shift/or turns into a bf16x2 (fp16x2) pair: e2m1 * 2^-126 (bf16) or * 2^-14 (fp16),
//   exact, subnormals included.
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
//  * gemm_stream_kernel (M <= 16; MT = 1, 2): persistent grid (resident CTAs, strips b,
//    b + grid, ...), each warp walks one flat sequence of U-tile steps across its CTA's strips
//    and issues step i+1's weight loads before computing step i (register double buffer, up to
//    128 B a lane in flight, also across strip boundaries); x_hat read at compute time (L1/L2).
//    Launched with programmatic dependent launch: weight loads start while the preparation
//    kernel still runs. 99 regs (MT=1) / 93 (MT=2), 2 CTAs an SM.
//  * gemm_mma_kernel (16 < M <= 64; MT = 4, 8): one CTA (8 warps) per 16-row strip, U tiles'
//    loads before use.
//  Both: warp w takes k-tiles w, w+8, ...; the 8 warps' partial sums are reduced in shared
//  memory in a fixed order (deterministic, no atomics, no workspace; the two kernels give the
//  same bits). Weight traffic: 4.5 bits a weight (0.5 B codes + 1/32 B scale).
//  * dequant_kernel (M > 64, then cuBLAS): one warp a tile, staged through shared memory so
//    every store is a full 128-byte row segment.
#include "sharq_common.cuh"
#include "sharq_kernels.h"

#include <algorithm>

namespace sharq {
namespace {

constexpr int kWarps = 8;

template <typename T> struct MmaT;
template <> struct MmaT<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t extract(uint32_t t) {
    return (t & 0x80008000u) | ((t >> 6) & 0x01C001C0u);
  }
  // (s_g, s_g8) e4m3 pair -> bf16x2 {s_g, s_g} and {s_g8, s_g8}, each * 2^119
  static __device__ __forceinline__ void scales(uint32_t s16, uint32_t& sg, uint32_t& sg8) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(s16 & 0xFFFFu), __NV_E4M3);
    const float f0 = __fmul_rn(__half2float(__half(__half_raw{h.x})), 6.646139978924579e35f);  // 2^119
    const float f1 = __fmul_rn(__half2float(__half(__half_raw{h.y})), 6.646139978924579e35f);
    __nv_bfloat162 a = __floats2bfloat162_rn(f0, f0);
    __nv_bfloat162 b = __floats2bfloat162_rn(f1, f1);
    sg = *reinterpret_cast<uint32_t*>(&a);
    sg8 = *reinterpret_cast<uint32_t*>(&b);
  }
  static __device__ __forceinline__ uint32_t two7() { return 0x43004300u; }  // bf16x2 {128, 128}
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct MmaT<__half> {
  static __device__ __forceinline__ uint32_t extract(uint32_t t) {
    return (t & 0x80008000u) | ((t >> 3) & 0x0E000E00u);
  }
  static __device__ __forceinline__ void scales(uint32_t s16, uint32_t& sg, uint32_t& sg8) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(s16 & 0xFFFFu), __NV_E4M3);
    __half2 v = __hmul2(__half2(h), __float2half2_rn(128.0f));  // <= 448 * 128, exact
    __half2 a = __low2half2(v), b = __high2half2(v);
    sg = *reinterpret_cast<uint32_t*>(&a);
    sg8 = *reinterpret_cast<uint32_t*>(&b);
  }
  static __device__ __forceinline__ uint32_t two7() { return 0x58005800u; }  // f16x2 {128, 128}
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

template <typename T, int MT, int U>
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
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = m_base + 8 * mt + g;
    mrow[mt] = m < M;
    xrow[mt] = x + (int64_t)(mrow[mt] ? m : 0) * xs + 16 * q;
  }

  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0.0f;

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
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if (mrow[mt]) {
            const uint4* xp = reinterpret_cast<const uint4*>(xrow[mt] + 64 * t);
            xv[u][mt][0] = __ldg(xp);
            xv[u][mt][1] = __ldg(xp + 1);
          } else {
            xv[u][mt][0] = make_uint4(0, 0, 0, 0);
            xv[u][mt][1] = make_uint4(0, 0, 0, 0);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = t0 + kWarps * u;
      if (t < KT) {
        uint32_t sg, sg8;
        MmaT<T>::scales(sv[u], sg, sg8);
        const uint32_t w[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          // step j: words (w0,w1) for j < 2, (w2,w3) for j >= 2; pair shift 8*(j&1) (+4 for a4a5)
          const uint32_t lo = w[(j >> 1) * 2 + 0], hi = w[(j >> 1) * 2 + 1];
          const int sh = 8 * (j & 1);
          uint32_t a[4];
          a[0] = MmaT<T>::mul(MmaT<T>::extract(lo << sh), sg);
          a[1] = MmaT<T>::mul(MmaT<T>::extract(hi << sh), sg8);
          a[2] = MmaT<T>::mul(MmaT<T>::extract(lo << (sh + 4)), sg);
          a[3] = MmaT<T>::mul(MmaT<T>::extract(hi << (sh + 4)), sg8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t* xw = reinterpret_cast<const uint32_t*>(&xv[u][mt][0]);  // 8 words
            MmaT<T>::mma(acc[mt], a, xw[2 * j], xw[2 * j + 1]);
          }
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) red[warp][mt][c][lane] = acc[mt][c];
  __syncthreads();
  const float ts = __fmul_rn(tscale[0], 128.0f);
  for (int idx = threadIdx.x; idx < MT * 4 * 32; idx += kWarps * 32) {
    const int mt = idx >> 7, c = (idx >> 5) & 3, ln = idx & 31;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][mt][c][ln];
    const int n = strip * 16 + (ln >> 2) + (c >= 2 ? 8 : 0);
    const int m = m_base + 8 * mt + 2 * (ln & 3) + (c & 1);
    if (m < M && n < n_valid) {
      float v = __fmul_rn(sum, ts);
      if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[n]));
      y[(int64_t)m * ys + n] = Elem<T>::from_float(v);
    }
  }
}

// ---- persistent, software-pipelined stream kernel (decode: M <= 16) -------------------------
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

template <typename T, int MT, int U>
struct StreamStage {
  uint4 q[U];
  uint32_t s[U];
};

template <typename T, int MT, int U>
__global__ void __launch_bounds__(kWarps * 32)
gemm_stream_kernel(const T* __restrict__ x, int64_t xs, const uint4* __restrict__ qw,
                   const uint8_t* __restrict__ sc, const float* __restrict__ tscale,
                   const T* __restrict__ bias, T* __restrict__ y, int64_t ys, int M, int n_valid,
                   int K, int wblock, int nstrips) {
  __shared__ float red[kWarps][MT][4][32];
  const int m_base = blockIdx.y * 8 * MT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;
  const int KT = K >> 6;
  const int SBT = wblock == 32 ? 32 : 64;
  const int soff = (wblock == 32 ? (q >> 1) : q) * 16 + 2 * g;
  const int nsteps = (KT + kWarps * U - 1) / (kWarps * U);  // steps a strip (same for all warps)
  const int my_strips = nstrips > (int)blockIdx.x ? (nstrips - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
  const int total = my_strips * nsteps;
  const float ts = __fmul_rn(tscale[0], 128.0f);

  const T* xrow[MT];
  bool mrow[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = m_base + 8 * mt + g;
    mrow[mt] = m < M;
    xrow[mt] = x + (int64_t)(mrow[mt] ? m : 0) * xs + 16 * q;
  }
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0.0f;

  // step i -> strip blockIdx.x + (i / nsteps) * gridDim.x, tiles warp + 8 (U (i % nsteps) + u)
  auto load = [&](StreamStage<T, MT, U>& st, int i) {
    const int strip = (int)blockIdx.x + (i / nsteps) * (int)gridDim.x;
    const int tb = warp + kWarps * U * (i % nsteps);
    const uint4* qs = qw + (int64_t)strip * KT * 32 + lane;
    const uint8_t* ss = sc + (int64_t)strip * KT * SBT + soff;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = tb + kWarps * u;
      if (t < KT) {
        st.q[u] = ld_stream(qs + (int64_t)t * 32);
        st.s[u] = *reinterpret_cast<const uint16_t*>(ss + (int64_t)t * SBT);
      }
    }
  };
  auto compute = [&](const StreamStage<T, MT, U>& st, int i) {
    const int tb = warp + kWarps * U * (i % nsteps);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = tb + kWarps * u;
      if (t < KT) {
        uint4 xv[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if (mrow[mt]) {
            const uint4* xp = reinterpret_cast<const uint4*>(xrow[mt] + 64 * t);
            xv[mt][0] = __ldg(xp);
            xv[mt][1] = __ldg(xp + 1);
          } else {
            xv[mt][0] = make_uint4(0, 0, 0, 0);
            xv[mt][1] = make_uint4(0, 0, 0, 0);
          }
        }
        uint32_t sg, sg8;
        MmaT<T>::scales(st.s[u], sg, sg8);
        const uint32_t w[4] = {st.q[u].x, st.q[u].y, st.q[u].z, st.q[u].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t lo = w[(j >> 1) * 2 + 0], hi = w[(j >> 1) * 2 + 1];
          const int sh = 8 * (j & 1);
          uint32_t a[4];
          a[0] = MmaT<T>::mul(MmaT<T>::extract(lo << sh), sg);
          a[1] = MmaT<T>::mul(MmaT<T>::extract(hi << sh), sg8);
          a[2] = MmaT<T>::mul(MmaT<T>::extract(lo << (sh + 4)), sg);
          a[3] = MmaT<T>::mul(MmaT<T>::extract(hi << (sh + 4)), sg8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t* xw = reinterpret_cast<const uint32_t*>(&xv[mt][0]);
            MmaT<T>::mma(acc[mt], a, xw[2 * j], xw[2 * j + 1]);
          }
        }
      }
    }
  };
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
      const int m = m_base + 8 * mt + 2 * (ln & 3) + (c & 1);
      if (m < M && n < n_valid) {
        float v = __fmul_rn(sum, ts);
        if (bias != nullptr) v = __fadd_rn(v, Elem<T>::to_float(bias[n]));
        y[(int64_t)m * ys + n] = Elem<T>::from_float(v);
      }
    }
    __syncthreads();
  };

  StreamStage<T, MT, U> A, B;
  if (total > 0) load(A, 0);
  // Programmatic dependent launch: the weights do not depend on the previous kernel (the
  // preparation writing x_hat), so their first loads are issued before waiting for it. A no-op
  // when launched without the PDL attribute or when the previous kernel has completed.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
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
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemm_stream_kernel<T, MT, U>, kWarps * 32, 0) != cudaSuccess || v < 1) v = 1;
    per_sm = v;
  }
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
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
  return cudaLaunchKernelEx(&cfg, gemm_stream_kernel<T, MT, U>, static_cast<const T*>(x), xs,
                            static_cast<const uint4*>(qw), static_cast<const uint8_t*>(sc), ts,
                            static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid, K,
                            wblock, nstrips);
}

template <typename T, int MT, int U>
cudaError_t launch_mma_t(const void* x, int64_t xs, const void* qw, const void* sc,
                         const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                         int n_valid, int K, int wblock, cudaStream_t stream) {
  dim3 grid(N / 16, (M + 8 * MT - 1) / (8 * MT));
  gemm_mma_kernel<T, MT, U><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), xs, static_cast<const uint4*>(qw), static_cast<const uint8_t*>(sc),
      ts, static_cast<const T*>(bias), static_cast<T*>(y), ys, M, n_valid, K, wblock);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_mma_dt(const void* x, int64_t xs, const void* qw, const void* sc,
                          const float* ts, const void* bias, void* y, int64_t ys, int M, int N,
                          int n_valid, int K, int wblock, cudaStream_t stream) {
  if (M <= 8) return launch_stream_t<T, 1, 4>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 16) return launch_stream_t<T, 2, 4>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  if (M <= 32) return launch_mma_t<T, 4, 2>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
  return launch_mma_t<T, 8, 1>(x, xs, qw, sc, ts, bias, y, ys, M, N, n_valid, K, wblock, stream);
}

// ---- dequantization to a 16-bit workspace (large-M path: then cuBLAS) -----------------------
// One warp per 16x64 tile (grid-stride over tiles, kDqU tiles' 16-byte loads issued before any
// is used: 64 B in flight a lane). Dequant with the GEMM's bit trick: nibble -> e2m1 * 2^-126
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
        o.x = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::extract(wd[i]), sc2), two7);
        o.y = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::extract(wd[i] << 4), sc2), two7);
        o.z = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::extract(wd[i] << 8), sc2), two7);
        o.w = MmaT<T>::mul(MmaT<T>::mul(MmaT<T>::extract(wd[i] << 12), sc2), two7);
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
                            cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (N % 16 || K % 64 || (wblock != 16 && wblock != 32)) return cudaErrorInvalidValue;
  switch (dtype) {
    case kBF16: return launch_mma_dt<__nv_bfloat16>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
    case kFP16: return launch_mma_dt<__half>(x, x_stride, qweight, scales, tensor_scale, bias, y, y_stride, M, N, n_valid, K, wblock, stream);
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
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    sms = 132;
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
