// tma_ring_bench.cu: how fast can a TMA ring alone move the decoder-warp wgmma kernel's bytes?
//
// gemm_wgmma.cu's decoder-warp kernel (M <= 64) spends 28 of gate_up's 45 us in its TMA ring
// alone (session 40: builds without the decode and the MMAs), and the weights' source does not
// matter (session 41: the same GEMM with its weights already in L2 is as slow). This standalone
// program (no torch) runs only a ring on the same layout: one producer thread (lane 0 of warp 0;
// all of warp 0 for per-strip bulk copies), one consumer thread (lane 0 of warp 1) a CTA, S slots
// of kpack consecutive k-tiles, each slot holding what the configuration names (Ring below):
// weights [strips][KT][512 B] as one 3-D box a k-tile {128 u32, 1, strips} (the kernel's) or one
// box of kpack k-tiles, scale bytes likewise (weight block 32), x_hat one 2-D box {64, 64 rows}
// (128-byte swizzle, L2-resident) a k-tile. It reports the median time of each configuration
// (cudaEvent, 20 launches after 3 warm-ups, L2 evicted by a read of 256 MB before each) and the
// weights' bytes a second. Grid: `ctas` CTAs x `strips` strips (gate_up at 224 rows a CTA:
// 128 x 14), KT = 64 (K = 4096), slots visited from a start rotated by the CTA (as the kernel).
// Then, with no data at all, an empty ring ("empty") and the kernel's B-tile handshake alone
// (handshake_kernel). Results and their reading: benchmarks/results/kernels-H200-dec-kp2.json.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I sharq_vllm/csrc \
//     tools/gpu/tma_ring_bench.cu -o /tmp/tma_ring_bench && /tmp/tma_ring_bench
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "sm90_async.cuh"

using namespace sharq::async;

constexpr int kMaxSlots = 24;
constexpr int kXBox = 64 * 128;  // 64 rows x 64 bf16

struct Maps {
  CUtensorMap w, w2, w4, wnp, s, s2, s4, x;
};

__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

// One slot = kpack consecutive k-tiles. w / s: 0 none, 1 one box a k-tile, 2 one box of kpack
// k-tiles; 3 (w only) `strips` 1-D bulk copies of 512 B a k-tile (one a lane), 4 (w only) one
// contiguous 1-D bulk copy of the same bytes a slot (not the GEMM's order: the copy engine's
// ceiling). x: one 64-row box a k-tile. np: the weights' map without L2 promotion.
struct Ring {
  int kpack, w, s, x, np;
};

// The ring's waits: 0 mbarrier.try_wait (sm90_async.cuh's mbar_wait: the thread may be suspended
// until the phase completes or a system time limit), 1 mbarrier.test_wait in a spin loop (never
// suspends), 2 try_wait with a 32 ns suspend-time hint.
template <int WAIT>
__device__ __forceinline__ void ring_wait(uint64_t* bar, uint32_t parity) {
  if constexpr (WAIT == 0) {
    mbar_wait(bar, parity);
  } else if constexpr (WAIT == 1) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "TW_%=:\n"
        "mbarrier.test_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra TW_%=;\n"
        "}\n" ::"r"(smem_u32(bar)),
        "r"(parity)
        : "memory");
  } else {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "TH_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1, %2;\n"
        "@!p bra TH_%=;\n"
        "}\n" ::"r"(smem_u32(bar)),
        "r"(parity), "n"(32)
        : "memory");
  }
}

template <int WAIT>
__global__ void __launch_bounds__(64, 1)
ring_kernel(const __grid_constant__ Maps maps, const uint8_t* __restrict__ wraw, Ring rc, int KT, int strips,
            int nstrips, int S, int slot_bytes, unsigned* sink) {
  extern __shared__ __align__(1024) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kMaxSlots;
  uint8_t* ring = smem + 1024;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int i = 0; i < S; ++i) {
      mbar_init(&full[i], 1);
      mbar_init(&empty[i], 1);
    }
    mbar_fence_init();
  }
  __syncthreads();
  const int strip0 = blockIdx.x * strips, kp = rc.kpack;
  const int steps = KT / kp;
  const int rot = (int)((blockIdx.x * 7u) % (unsigned)steps);
  // slot: [x boxes kp x 8 KB][weights: strips x kp x 512 B][scales: strips x kp x 32 B]
  const int xbytes = kXBox * kp, wbytes = strips * 512 * kp, sbytes = strips * 32 * kp;
  uint32_t bytes = 0;
  if (rc.w) bytes += wbytes;
  if (rc.s) bytes += sbytes;
  if (rc.x) bytes += xbytes;
  const CUtensorMap* wmap = kp == 1 ? (rc.np ? &maps.wnp : &maps.w) : (kp == 2 ? &maps.w2 : &maps.w4);
  const CUtensorMap* smap = kp == 1 ? &maps.s : (kp == 2 ? &maps.s2 : &maps.s4);
  if (warp == 0) {
    for (int i = 0; i < steps; ++i) {
      const int slot = i % S, round = i / S;
      if (round > 0) ring_wait<WAIT>(&empty[slot], (round - 1) & 1);
      int kt = i + rot;
      if (kt >= steps) kt -= steps;
      kt *= kp;
      uint8_t* base = ring + slot * slot_bytes;
      uint8_t* wb = base + xbytes;
      uint8_t* sb = wb + wbytes;
      if (lane == 0) {
        mbar_arrive_expect_tx(&full[slot], bytes);
        for (int j = 0; j < kp; ++j) {
          if (rc.x) tma_load_2d(base + j * kXBox, &maps.x, 64 * (kt + j), 0, &full[slot]);
          if (rc.w == 1) tma_load_3d(wb + j * strips * 512, rc.np ? &maps.wnp : &maps.w, 0, kt + j, strip0, &full[slot]);
          if (rc.s == 1) tma_load_3d(sb + j * strips * 32, &maps.s, 0, kt + j, strip0, &full[slot]);
        }
        if (rc.w == 2) tma_load_3d(wb, wmap, 0, kt, strip0, &full[slot]);
        if (rc.s == 2) tma_load_3d(sb, smap, 0, kt, strip0, &full[slot]);
        if (rc.w == 4) bulk_g2s(wb, wraw + ((size_t)blockIdx.x * steps + i) * wbytes, wbytes, &full[slot]);
      }
      __syncwarp();
      if (rc.w == 3 && lane < strips) {
        const int st = min(strip0 + lane, nstrips - 1);
        for (int j = 0; j < kp; ++j)
          bulk_g2s(wb + (j * strips + lane) * 512, wraw + ((size_t)st * KT + kt + j) * 512, 512, &full[slot]);
      }
    }
  } else if (lane == 0) {
    unsigned acc = 0;
    for (int i = 0; i < steps; ++i) {
      const int slot = i % S, round = i / S;
      ring_wait<WAIT>(&full[slot], round & 1);
      acc += ring[slot * slot_bytes + xbytes];
      mbar_arrive(&empty[slot]);
    }
    if (acc == 0xFFFFFFFFu) sink[0] = acc;
  }
}

// No data at all: the decoder-warp kernel's per-k-tile B-tile handshake alone. `dec` threads
// (the decoders) wait for a free B buffer (bempty) and arrive on bfull (one arrival a thread, or
// one a warp after __syncwarp when `per_warp`); one thread (the MMA warpgroup's) waits on bfull and
// arrives on bempty; nb buffers, nk k-tiles.
__global__ void handshake_kernel(int nk, int nb, int dec, int per_warp, unsigned* sink) {
  __shared__ __align__(8) uint64_t bfull[4], bempty[4];
  const int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int i = 0; i < nb; ++i) {
      mbar_init(&bfull[i], per_warp ? dec / 32 : dec);
      mbar_init(&bempty[i], 1);
    }
    mbar_fence_init();
  }
  __syncthreads();
  int b = 0, bphase = 0;
  if ((int)threadIdx.x < dec) {
    for (int i = 0; i < nk; ++i) {
      mbar_wait(&bempty[b], bphase ^ 1);
      if (per_warp) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&bfull[b]);
      } else {
        mbar_arrive(&bfull[b]);
      }
      if (++b == nb) {
        b = 0;
        bphase ^= 1;
      }
    }
  } else if ((int)threadIdx.x == dec) {
    for (int i = 0; i < nk; ++i) {
      mbar_wait(&bfull[b], bphase);
      mbar_arrive(&bempty[b]);
      if (++b == nb) {
        b = 0;
        bphase ^= 1;
      }
    }
    if (nk < 0) sink[0] = 1;
  }
}

// Reads `n` words (evicts L2 before each timed launch without leaving dirty lines in it).
__global__ void scrub_kernel(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    acc ^= p[i].x;
  if (acc == 0x12345678u) sink[0] = acc;
}

static PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q;
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess) {
    std::fprintf(stderr, "no cuTensorMapEncodeTiled\n");
    std::exit(1);
  }
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
}

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

// 23 launches of `launch`, each after `before` (outside the timed span): the last 20, in us, sorted.
template <typename Before, typename Launch>
static std::vector<float> time_us(cudaEvent_t e0, cudaEvent_t e1, Before before, Launch launch) {
  std::vector<float> ts;
  for (int r = 0; r < 23; ++r) {
    before();
    CK(cudaEventRecord(e0));
    launch();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    CK(cudaGetLastError());
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= 3) ts.push_back(ms * 1000.0f);
  }
  std::sort(ts.begin(), ts.end());
  return ts;
}

int main(int argc, char** argv) {
  const int KT = 64, M = 64, K = KT * 64;
  const int ctas = argc > 1 ? std::atoi(argv[1]) : 128, strips = argc > 2 ? std::atoi(argv[2]) : 14;
  const int nstrips = ctas * strips;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("{\"card\": \"%s\", \"sms\": %d, \"ctas\": %d, \"strips\": %d, \"KT\": %d, \"runs\": [\n", prop.name,
              prop.multiProcessorCount, ctas, strips, KT);
  const size_t wsize = (size_t)nstrips * KT * 512, ssize = (size_t)nstrips * KT * 32, xsize = (size_t)M * K * 2;
  uint8_t *w, *s, *x;
  unsigned* sink;
  CK(cudaMalloc(&w, wsize));
  CK(cudaMalloc(&s, ssize));
  CK(cudaMalloc(&x, xsize));
  CK(cudaMalloc(&sink, 4));
  CK(cudaMemset(w, 1, wsize));
  CK(cudaMemset(s, 1, ssize));
  CK(cudaMemset(x, 1, xsize));
  // a buffer to evict L2 between launches (the weights come from DRAM, as in a serving step)
  const size_t scrub_size = 256u << 20;
  uint8_t* scrub;
  CK(cudaMalloc(&scrub, scrub_size));
  CK(cudaMemset(scrub, 3, scrub_size));
  auto enc = encoder();
  Maps maps;
  {
    const cuuint64_t gdim[2] = {(cuuint64_t)K, (cuuint64_t)M};
    const cuuint64_t gstride[1] = {(cuuint64_t)K * 2};
    const cuuint32_t box[2] = {64, 64}, es[2] = {1, 1};
    if (enc(&maps.x, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, x, gdim, gstride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) !=
        CUDA_SUCCESS)
      return 2;
  }
  for (int v = 0; v < 4; ++v) {  // w (1 k-tile), w2, w4, wnp (1 k-tile, no L2 promotion)
    const cuuint64_t gdim[3] = {128, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {512, (cuuint64_t)KT * 512};
    const cuuint32_t kp = v == 1 ? 2 : (v == 2 ? 4 : 1);
    const cuuint32_t box[3] = {128, kp, (cuuint32_t)strips}, es[3] = {1, 1, 1};
    CUtensorMap* m = v == 0 ? &maps.w : (v == 1 ? &maps.w2 : (v == 2 ? &maps.w4 : &maps.wnp));
    if (enc(m, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, w, gdim, gstride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_NONE, v == 3 ? CU_TENSOR_MAP_L2_PROMOTION_NONE : CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return 3;
  }
  for (int v = 0; v < 3; ++v) {
    const cuuint64_t gdim[3] = {32, (cuuint64_t)KT, (cuuint64_t)nstrips};
    const cuuint64_t gstride[2] = {32, (cuuint64_t)KT * 32};
    const cuuint32_t kp = v == 1 ? 2 : (v == 2 ? 4 : 1);
    const cuuint32_t box[3] = {32, kp, (cuuint32_t)strips}, es[3] = {1, 1, 1};
    CUtensorMap* m = v == 0 ? &maps.s : (v == 1 ? &maps.s2 : &maps.s4);
    if (enc(m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, s, gdim, gstride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) !=
        CUDA_SUCCESS)
      return 4;
  }
  CK(cudaFuncSetAttribute(ring_kernel<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  CK(cudaFuncSetAttribute(ring_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  CK(cudaFuncSetAttribute(ring_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
  const char* only = argc > 3 ? argv[3] : "";
  struct Cfg {
    const char* name;
    Ring r;
    int wait;
  };
  // {kpack, w, s, x, np}, wait
  const Cfg cfgs[] = {
      {"W", {1, 1, 0, 0, 0}, 0},         {"W.spin", {1, 1, 0, 0, 0}, 1},     {"W.hint", {1, 1, 0, 0, 0}, 2},
      {"X", {1, 0, 0, 1, 0}, 0},         {"X.spin", {1, 0, 0, 1, 0}, 1},     {"WSX", {1, 1, 1, 1, 0}, 0},
      {"WSX.spin", {1, 1, 1, 1, 0}, 1},  {"WSX.hint", {1, 1, 1, 1, 0}, 2},   {"W2box", {2, 2, 0, 0, 0}, 0},
      {"W2box.spin", {2, 2, 0, 0, 0}, 1}, {"W2x1", {2, 1, 0, 0, 0}, 0},      {"W4box", {4, 2, 0, 0, 0}, 0},
      {"X2", {2, 0, 0, 1, 0}, 0},        {"X2.spin", {2, 0, 0, 1, 0}, 1},    {"WSX2box", {2, 2, 2, 1, 0}, 0},
      {"WSX2box.spin", {2, 2, 2, 1, 0}, 1}, {"WSX4box", {4, 2, 2, 1, 0}, 0}, {"bulk1", {1, 3, 0, 0, 0}, 0},
      {"contig1", {1, 4, 0, 0, 0}, 0},   {"contig2", {2, 4, 0, 0, 0}, 0},    {"contig4", {4, 4, 0, 0, 0}, 0},
      {"empty", {1, 0, 0, 0, 0}, 0}};  // no copies: the ring's mbarrier handshakes alone
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  bool first = true;
  for (const Cfg& c : cfgs) {
    if (only[0] && std::string(only).find(std::string(",") + c.name + ",") == std::string::npos) continue;
    auto kern = c.wait == 0 ? ring_kernel<0> : (c.wait == 1 ? ring_kernel<1> : ring_kernel<2>);
    const int kp = c.r.kpack;
    const int slot_bytes = ((kXBox + strips * 544) * kp + 1023) / 1024 * 1024;
    const int max_slots = std::min(kMaxSlots, (227 * 1024 - 1024) / slot_bytes);
    for (int S : {2, 4, 7, max_slots}) {
      if (S > max_slots) continue;
      if (S == max_slots && (S == 2 || S == 4 || S == 7)) continue;
      const int smem = 1024 + S * slot_bytes;
      const std::vector<float> ts = time_us(
          e0, e1,
          [&] {
            scrub_kernel<<<prop.multiProcessorCount * 4, 512>>>(reinterpret_cast<const uint4*>(scrub),
                                                                 scrub_size / 16, sink);
          },
          [&] { kern<<<ctas, 64, smem>>>(maps, w, c.r, KT, strips, nstrips, S, slot_bytes, sink); });
      const float med = ts[ts.size() / 2];
      const double wgb = c.r.w ? (double)(ctas * strips) * KT * 512 / (med * 1e3) : 0.0;
      std::printf("%s {\"cfg\": \"%s\", \"slots\": %d, \"slot_bytes\": %d, \"us\": %.2f, \"min_us\": %.2f, "
                  "\"weight_GBps\": %.0f}",
                  first ? " " : ",\n ", c.name, S, slot_bytes, med, ts.front(), wgb);
      std::fflush(stdout);
      first = false;
    }
  }
  // the B-tile handshake alone, KT = 64 k-tiles a CTA, 3 buffers (the kernel's), on the same grid
  for (int dec : {32, 256}) {
    for (int per_warp = 0; per_warp < 2; ++per_warp) {
      if (dec == 32 && per_warp) continue;
      const std::vector<float> ts =
          time_us(e0, e1, [] {}, [&] { handshake_kernel<<<ctas, dec + 32>>>(KT, 3, dec, per_warp, sink); });
      std::printf(",\n {\"cfg\": \"handshake\", \"decoder_threads\": %d, \"per_warp\": %d, \"k_tiles\": %d, "
                  "\"us\": %.2f, \"min_us\": %.2f}",
                  dec, per_warp, KT, ts[ts.size() / 2], ts.front());
    }
  }
  std::printf("\n]}\n");
  return 0;
}
