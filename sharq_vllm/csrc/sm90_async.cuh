// sm90_async.cuh: the Hopper (sm_90a) asynchronous primitives the SharQ wgmma GEMM uses, as thin
// inline-PTX wrappers (torch-free). One concept each:
//   * mbarrier: a shared-memory barrier with a phase bit and a transaction-byte count; producers
//     arrive (optionally announcing bytes an async copy will deliver), consumers wait on a parity.
//   * cp.async.bulk.tensor: one box of a 2-D / 3-D tensor (TMA descriptor) -> shared memory by
//     the copy engine, completing its bytes on an mbarrier (no registers, no per-thread addressing).
//   * named barriers: a barrier over a subset of the CTA's warps.
//   * setmaxnreg: move registers between warpgroups.
//   * wgmma: fence / commit / wait of warpgroup MMAs, the shared-memory matrix descriptors, and the
//     proxy fence that publishes ordinary shared-memory stores to them.
//   * clusters: barrier over the cluster's CTAs, loads from a peer CTA's shared memory and their
//     rank-order sum (the split-K reductions), asynchronous stores into a peer's shared memory
//     completing on its mbarrier (the preparation's row maxima).
//   * programmatic dependent launch: wait for the preceding kernel's memory before reading it.
// Semantics: PTX ISA 8.x, "mbarrier", "cp.async.bulk.tensor", "wgmma", "setmaxnreg", "barrier.cluster",
// "bar.sync", "griddepcontrol".
#pragma once

#include <cstdint>

namespace sharq {
namespace async {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Make barrier initialisation visible to the async proxy (after all inits, before use).
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Arrive and announce that async copies will complete `bytes` more bytes on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}
// Block until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// Box {c0 (inner, elements), c1 (rows)} of the 2-D tensor map -> dst (1024-byte aligned for the
// 128-byte swizzle), completing on `bar`. Rows outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tmap, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(dst)),
      "l"(tmap), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}

// Box {c0, c1, c2} of a 3-D tensor map -> dst (16-byte aligned, dense in box order).
__device__ __forceinline__ void tma_load_3d(void* dst, const void* tmap, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_u32(dst)),
      "l"(tmap), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
}

// wgmma ordering: fence before the first MMA that reads registers written by ordinary code,
// commit the issued MMAs as one group, wait until at most N groups are pending.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Make this thread's ordinary shared-memory stores visible to the async proxy (wgmma operand reads,
// TMA): after writing an MMA operand with st.shared, before the barrier that precedes the wgmma.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keep the compiler from moving accesses of an accumulator across the asynchronous MMAs.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory matrix descriptor of a K-major operand stored with the 128-byte swizzle (rows of
// 128 bytes, 8-row groups 1024 bytes apart: the layout a TMA box of 64 16-bit values a row with
// CU_TENSOR_MAP_SWIZZLE_128B writes). Start address >> 4 (bits 0-13), leading byte offset unused
// for this layout (1), stride byte offset 1024 >> 4 (bits 32-45), layout type 1 = 128B swizzle
// (bits 62-63). Moving 16 values along K inside the row = +32 bytes on the start address.
__device__ __forceinline__ uint64_t desc_sw128(const void* p) {
  const uint64_t addr = smem_u32(p);
  return ((addr & 0x3FFFFull) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

// Shared-memory matrix descriptor of a K-major operand without swizzle (layout type 0): core
// matrices of 8 rows x 16 bytes (8 16-bit values a row, rows 16 bytes apart: 128 contiguous
// bytes); `lbo` bytes between core matrices adjacent along K, `sbo` between those adjacent along
// M / N (PTX ISA, "Matrix Descriptor Format"). Start address 16-byte aligned.
__device__ __forceinline__ uint64_t desc_interleave(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}

// Cluster-wide barrier (every thread of every CTA of the cluster; release/acquire orders shared
// memory writes before it with peer reads after it).
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The cluster barrier without ordering: after mbarrier initialisation (mbar_fence_init), before
// peers signal those barriers (CUTLASS's order).
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
// 4 bytes stored at this CTA's shared address `p` in cluster CTA `rank`, completing 4 bytes on
// that CTA's mbarrier at this CTA's address `bar` (asynchronous: no wait here, visible to the
// peer's threads once they observe the mbarrier phase complete).
__device__ __forceinline__ void st_async_peer_u32(const void* p, uint32_t rank, uint32_t v, uint64_t* bar) {
  uint32_t ra, rb;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(ra) : "r"(smem_u32(p)), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(rb) : "r"(smem_u32(bar)), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.u32 [%0], %1, [%2];\n" ::"r"(ra), "r"(v), "r"(rb)
               : "memory");
}
// 16 bytes at this CTA's shared address `p`, read from the same offset in cluster CTA `rank`.
__device__ __forceinline__ float4 ld_peer_f4(const void* p, uint32_t rank) {
  uint32_t ra;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(ra) : "r"(smem_u32(p)), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(ra)
               : "memory");
  return v;
}

// s (rank 0's 16 bytes at `p`) plus the same 16 bytes of cluster CTAs 1 .. n - 1, added in rank
// order (FP32, each add rounded once): the fixed-order split-K reduction of the wgmma GEMMs
// (deterministic whichever CTA runs it).
__device__ __forceinline__ float4 add_peers_f4(float4 s, const void* p, int n) {
  for (int k = 1; k < n; ++k) {
    const float4 v = ld_peer_f4(p, k);
    s.x = __fadd_rn(s.x, v.x);
    s.y = __fadd_rn(s.y, v.y);
    s.z = __fadd_rn(s.z, v.z);
    s.w = __fadd_rn(s.w, v.w);
  }
  return s;
}

// Registers a thread of this warpgroup may use from here on (all its warps execute it).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Wait until the preceding kernel in the stream has completed and its writes are visible (a
// no-op without programmatic dependent launch).
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

}  // namespace async
}  // namespace sharq
