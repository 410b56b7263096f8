// sharq_kernels.h: host-side launchers of the SharQ CUDA kernels (torch-free C++ API).
// The torch.library binding (bindings.cpp) validates tensors and calls these.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace sharq {

enum DType : int { kBF16 = 0, kFP16 = 1, kFP32 = 2 };

// Streaming multiprocessors of the current device (132, an H100's / H200's, if the query fails):
// the launchers size persistent grids and split-K clusters by it.
inline int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1) return 132;
  return sms;
}

// Activation FP4 format and N:M backbone pattern as the preparation kernel takes them. The one
// definition: sharq_vllm/options.py mirrors them (FormatCode, PatternCode) and
// tests/test_options.py parses this header to check that it does.
enum Format : int { kNVFP4 = 0, kMXFP4 = 1 };
enum Pattern : int { kDense = 0, kTwoOfFour = 1, kFourOfEightPairs = 2 };

// x_hat in fragment order (sharq_vllm/kernels/layout.py, xhat_to_fragments: [M/8][K/64][2][8][4][8],
// the 8 values lane 4g + q of the stream GEMM feeds to a tile's MMAs, 16 contiguous bytes), where
// the caller asks for it: x_frag, a value of XhatFragment, is the most rows stored so (whole 8-row
// groups only: M = 8, 16, ... up to it), row-major above and at other M. The preparation kernels
// write it, the stream GEMM reads it; kXhatFragTo16 suits every layer (M <= kGemmStreamWideMaxM
// takes the stream kernel for every N), kXhatFragTo32 a layer whose GEMM takes the stream kernel up
// to kGemmStreamMaxM rows too (gemm_stream_to_max_m; a GEMM asked to read fragments with another
// kernel refuses). Mirrored by sharq_vllm/kernels/dispatch.py (XHAT_FRAGMENT_LIMITS,
// xhat_fragment_limit), checked by tests/test_options.py.
enum XhatFragment : int { kXhatFragOff = 0, kXhatFragTo16 = 16, kXhatFragTo32 = 32 };
constexpr bool xhat_fragment_valid(int x_frag) {
  return x_frag == kXhatFragOff || x_frag == kXhatFragTo16 || x_frag == kXhatFragTo32;
}
constexpr bool xhat_fragment_rows(int M, int x_frag) {
  return x_frag != kXhatFragOff && M >= 8 && M % 8 == 0 && M <= x_frag;
}

// Optional outputs of the preparation kernel for bit-exactness tests (null = not written).
struct PrepDebug {
  uint8_t* mask = nullptr;        // [M, K] 0/1
  uint8_t* bb_codes = nullptr;    // [M, K/2] packed E2M1, low nibble first
  uint8_t* bb_scales = nullptr;   // [M, K/backbone_block] E4M3 bits or E8M0 codes
  uint8_t* res_codes = nullptr;   // [M, K/2]
  uint8_t* res_scales = nullptr;  // [M, K/residual_block]
  float* tscales = nullptr;       // [M, 2]: backbone / residual FP32 tensor scale (0 for MXFP4)
  bool any() const { return mask || bb_codes || bb_scales || res_codes || res_scales || tscales; }
};

// fmt: a Format, pattern: a Pattern. backbone_block / residual_block: channels per backbone /
// residual scale (16, 32 or 64), values the caller derives from fmt and pattern
// (sharq_vllm/reference.py: backbone_block, residual_block); K must be a multiple of both.
// force_v / force_cl (0 = automatic): chunks a thread (1, 2, 4, 8) and CTAs a row (cluster size
// 1..8, K % (64 cl) == 0) for benchmarks and tests; every configuration gives identical bits.
// x_frag (XhatFragment): x_hat in fragment order where xhat_fragment_rows(M, x_frag) (x_hat [M, K]
// contiguous), row-major otherwise (for launch_prep_norm and launch_prep_silu_mul too). Not with
// debug outputs.
cudaError_t launch_prep(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                        int fmt, int pattern, int backbone_block, int residual_block,
                        const PrepDebug& dbg, cudaStream_t stream, int force_v = 0,
                        int force_cl = 0, int x_frag = kXhatFragOff);

// RMSNorm (+ residual add) in front of the preparation (launch_prep_norm, prep.cu's
// rms_norm_row): x_hat = prepare(rms_norm(x (+ residual))) in one pass over the row; with a
// residual, residual_out [M, K] (contiguous) receives x + residual rounded to the dtype. weight
// [K] has the activations' dtype. One CTA (or, at one chunk a thread, a cluster of 2..8 CTAs) a
// row, so K <= kPrepNormMaxK. force_v (0 = automatic: 2 above 256 rows): chunks a thread, 1 or 2;
// force_cl (0 = automatic): CTAs a row, whose chunk counts K / (8 cl) must be a power of two
// (the norm's summation tree) and K % (64 cl) == 0; for benchmarks and tests (identical bits).
// What produces the row the preparation takes (prep.cu's kProd): the row itself, RMSNorm (+ the
// residual add), or SiLU * mul of the row's two halves (launch_prep_silu_mul below).
enum PrepProducer : int { kPrepPlain = 0, kPrepNorm = 1, kPrepAddNorm = 2, kPrepSiluMul = 3 };
constexpr int kPrepNormMaxK = 8 * 1024;
// CTA size bound of the preparation kernel at V = 1, 2, 4, 8 chunks of 8 channels a thread (its
// __launch_bounds__; launch_prep refuses a row needing more). V = 4 is bounded to 448 threads so
// that two CTAs share an SM (72 registers a thread): prep.cu's throughput configuration for rows of
// 1025..1792 chunks. Mirrored by kernels.dispatch.PREP_MAX_THREADS (tests/test_options.py).
constexpr int kPrepMaxThreads[4] = {1024, 1024, 448, 512};
struct PrepNorm {
  const void* residual = nullptr;  // [M, K], row stride res_stride elements; null: no add
  int64_t res_stride = 0;
  void* residual_out = nullptr;    // [M, K] contiguous; null exactly when residual is
  const void* weight = nullptr;    // [K]
  float eps = 0.0f;
};
cudaError_t launch_prep_norm(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                             int fmt, int pattern, int backbone_block, int residual_block,
                             const PrepNorm& norm, cudaStream_t stream, int force_v = 0, int force_cl = 0,
                             int x_frag = kXhatFragOff);

// SiLU * mul in front of the preparation: x [M, 2K] rows [gate | up] (row stride x_stride),
// x_hat [M, K] = prepare(round(round(silu(gate)) * up)) (prep.cu, silu_mul_chunk). Any K the
// preparation takes; force_v / force_cl as for launch_prep.
cudaError_t launch_prep_silu_mul(const void* x, int64_t x_stride, void* xhat, int M, int K, int dtype,
                                 int fmt, int pattern, int backbone_block, int residual_block,
                                 cudaStream_t stream, int force_v = 0, int force_cl = 0, int x_frag = kXhatFragOff);
// SiLU * mul alone (tests): y [M, K] = round(round(silu(gate)) * up), the values
// launch_prep_silu_mul quantizes.
cudaError_t launch_silu_mul(const void* x, int64_t x_stride, void* y, int M, int K, int dtype, cudaStream_t stream);

// Prepacked weight layout (see gemm.cu): qweight [N/16][K/64][32 lanes][16 B],
// scales [N/16][K/64][scale_bytes_per_tile] with 32 (block 32) or 64 (block 16) bytes a tile.
// y[M, N] = (x[M, K] @ w^T) * tensor_scale (+ bias), FP32 accumulation, N % 16 == 0 after
// padding (n_valid <= N rows are stored), K % 64 == 0.
// x_frag (XhatFragment): x in fragment order where xhat_fragment_rows(M, x_frag) (x contiguous);
// the kernel for those rows must be the stream kernel (cudaErrorInvalidValue otherwise).
// variant: kGemmAuto (the kernel for M: gemm.cu, launch_mma_dt) or one forced kernel (benchmarks
// and tests): the register stream kernel (M <= 32), the tile kernel (both mma.sync: one tile
// order, one fixed-order reduction, the same bits), the wgmma kernel (gemm_wgmma.cu; any M; its
// own fixed summation order) or the register-source wgmma kernel (gemm_wgmma_rs.cu; M <= 64; its
// own fixed order; forced only: measured slower than the automatic choice).
enum GemmVariant : int { kGemmAuto = 0, kGemmStream = 1, kGemmTile = 2, kGemmWgmma = 3, kGemmWgmmaRs = 4 };
// kGemmAuto's choice by M: the stream kernel up to kGemmStreamWideMaxM, and up to kGemmStreamMaxM
// for layers of at most kGemmStreamMaxRounds rounds of 16-row strips over its resident CTAs (2 an
// SM) or whose kGemmDecTileRows-row wgmma tiles would not fit one wave of the SMs, the wgmma
// kernels above (the sweeps behind them: gemm.cu; the tile kernel runs when forced
// only, as the bit-exact twin of the stream kernel); among those, the decoder-warp kernel up to
// kGemmWgmmaDecMaxM and the token-wide kernel above (gemm_wgmma.cu; the A/B behind it:
// benchmarks/results/kernels-H200-wgmma-dec.json). Mirrored by sharq_vllm/kernels/dispatch.py
// (GEMM_AUTO_MAX_M, GEMM_STREAM_MAX_ROUNDS, GEMM_DEC_TILE_ROWS), checked by tests/test_options.py.
enum GemmAutoMaxM : int { kGemmStreamWideMaxM = 16, kGemmStreamMaxM = 32, kGemmWgmmaDecMaxM = 128 };
constexpr int kGemmStreamMaxRounds = 4;
constexpr int kGemmDecTileRows = 256;  // weight rows of a decoder-warp wgmma tile (gemm_wgmma.cu, DecCfg)
constexpr int kGemmStreamCtasPerSm = 2;  // the stream kernel's resident CTAs an SM (gemm.cu)
// Whether kGemmAuto takes the stream kernel up to kGemmStreamMaxM rows for N (padded) weight rows
// on sms SMs (up to kGemmStreamWideMaxM it takes it for every N): a layer of at most
// kGemmStreamMaxRounds rounds of strips, or one whose wgmma tiles would not fit one wave.
constexpr bool gemm_stream_to_max_m(int N, int sms) {
  return !(N / 16 > kGemmStreamMaxRounds * kGemmStreamCtasPerSm * sms &&
           (N + kGemmDecTileRows - 1) / kGemmDecTileRows <= sms);
}
// The kernel kGemmAuto runs among the stream and wgmma kernels (GemmVariant; M > 0; the dequantize
// + cuBLAS path above is dispatch.py's choice, outside launch_gemm_mma).
constexpr int gemm_auto_variant(int M, int N, int sms) {
  return M <= kGemmStreamWideMaxM || (M <= kGemmStreamMaxM && gemm_stream_to_max_m(N, sms)) ? kGemmStream : kGemmWgmma;
}
// The most rows a forced kernel takes (absent: any M): the stream kernel's row groups go up to 4
// (MT = 4, 32 rows), the register-source wgmma kernel's token columns up to 64. Mirrored by
// dispatch.GEMM_VARIANT_MAX_M, checked by tests/test_options.py.
enum GemmVariantMaxM : int { kGemmStreamLimitM = 32, kGemmWgmmaRsLimitM = 64 };
cudaError_t launch_gemm_mma(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                            const float* tensor_scale, const void* bias, void* y, int64_t y_stride,
                            int M, int N, int n_valid, int K, int wblock, int dtype,
                            cudaStream_t stream, int variant = kGemmAuto, int x_frag = kXhatFragOff);

// The wgmma kernel alone (gemm_wgmma.cu; x 16-byte aligned with a row stride of a multiple of 16
// bytes, as every GEMM here requires: TMA reads it).
cudaError_t launch_gemm_wgmma(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                              const float* tensor_scale, const void* bias, void* y, int64_t y_stride, int M, int N,
                              int n_valid, int K, int wblock, int dtype, cudaStream_t stream);

// The register-source wgmma kernel alone (gemm_wgmma_rs.cu; M <= kGemmWgmmaRsLimitM; x as above).
// gemm_wgmma_rs_split: the cluster size that kernel splits K over for M rows of K (1, 2, 4, 8:
// x_hat's share of K must fit a CTA's shared memory), 0 where no split fits (the launch refuses).
int gemm_wgmma_rs_split(int M, int K);
cudaError_t launch_gemm_wgmma_rs(const void* x, int64_t x_stride, const void* qweight, const void* scales,
                                 const float* tensor_scale, const void* bias, void* y, int64_t y_stride, int M,
                                 int N, int n_valid, int K, int wblock, int dtype, cudaStream_t stream);

// w_hat [N, K] (dtype) = e2m1 * block scale (exact in bf16/fp16; no tensor scale).
cudaError_t launch_dequant(const void* qweight, const void* scales, void* w, int N, int K,
                           int wblock, int dtype, cudaStream_t stream);

}  // namespace sharq
