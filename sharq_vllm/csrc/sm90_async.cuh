// sm90_async.cuh: the Hopper (sm_90a) asynchronous primitives the SharQ ring GEMM uses, as thin
// inline-PTX wrappers (torch-free). One concept each:
//   * mbarrier: a shared-memory barrier with a phase bit and a transaction-byte count; producers
//     arrive (optionally announcing bytes an async copy will deliver), consumers wait on a parity.
//   * cp.async.bulk: one contiguous global -> shared copy done by the copy engine (TMA unit),
//     completing its bytes on an mbarrier (no registers, no per-thread addressing).
//   * named barriers: a barrier over a subset of the CTA's warps (the consumers).
//   * programmatic dependent launch: wait for the preceding kernel's memory before reading it.
// Semantics: PTX ISA 8.x, "mbarrier", "cp.async.bulk", "bar.sync", "griddepcontrol".
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

// Global -> this CTA's shared memory, `bytes` (a multiple of 16; both addresses 16-byte aligned),
// completing on `bar`.
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}

// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Wait until the preceding kernel in the stream has completed and its writes are visible (a
// no-op without programmatic dependent launch).
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

}  // namespace async
}  // namespace sharq
