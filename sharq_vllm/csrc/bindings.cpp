// bindings.cpp: torch.library registration of the SharQ CUDA kernels as `torch.ops.sharq_C.*`.
//
// These are low-level, out-parameter ops (no allocation, no host sync): the user-facing ops
// `torch.ops.sharq.prepare / gemm / prepare_debug` (sharq_vllm/ops.py) allocate outputs, pick
// the kernel (sharq_vllm/kernels/dispatch.py) and call these. Built by setup.py (CUDAExtension
// `sharq_vllm._C`) or JIT-built by sharq_vllm/kernels/build.py; either way loaded as a plain
// shared library (no pybind: the module init below only exists so that `import sharq_vllm._C`
// works).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <Python.h>

#include "sharq_kernels.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return sharq::kBF16;
    case at::kHalf: return sharq::kFP16;
    case at::kFloat: return sharq::kFP32;
    default: TORCH_CHECK(false, "sharq: unsupported dtype ", t.scalar_type());
  }
  return -1;
}

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "sharq: ", what, " launch failed: ", cudaGetErrorString(e));
}

uint8_t* opt_u8(const at::Tensor& t) { return t.numel() ? t.data_ptr<uint8_t>() : nullptr; }

void check_rows(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.is_cuda() && out.is_cuda(), "sharq: tensors must be on CUDA");
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2, "sharq: expected 2-D [M, K] tensors");
  TORCH_CHECK(x.stride(1) == 1 && out.is_contiguous(), "sharq: rows must be contiguous");
  TORCH_CHECK(x.scalar_type() == out.scalar_type(), "sharq: dtype mismatch");
  TORCH_CHECK((reinterpret_cast<uintptr_t>(x.data_ptr()) % 16) == 0 &&
                  (x.stride(0) * x.element_size()) % 16 == 0,
              "sharq: x rows must be 16-byte aligned");
}

// fmt / pattern: sharq::Format / sharq::Pattern codes; bb / rb: backbone / residual block
// (channels per scale), derived from them in Python (sharq_vllm/reference.py)
// x_frag (sharq::XhatFragment: 0, 16 or 32): x_hat in fragment order at the row counts
// sharq::xhat_fragment_rows names (the stream GEMM's; sharq_vllm/kernels/layout.py,
// xhat_to_fragments), row-major at others
void check_x_frag(int64_t x_frag) {
  TORCH_CHECK(sharq::xhat_fragment_valid((int)x_frag) && x_frag == (int)x_frag,
              "sharq: x_frag is the most rows of x_hat in fragment order: 0 (none), 16 or 32; got ", x_frag);
}

// x_frag: x_hat (out, contiguous) in fragment order where sharq::xhat_fragment_rows(M, x_frag)
void prep_impl(const at::Tensor& x, at::Tensor& out, int64_t fmt, int64_t pattern, int64_t bb,
               int64_t rb, sharq::PrepDebug dbg, int64_t force_v = 0, int64_t force_cl = 0, int64_t x_frag = 0) {
  check_x_frag(x_frag);
  check_rows(x, out);
  const c10::cuda::CUDAGuard guard(x.device());
  const int M = x.size(0), K = x.size(1);
  check_cuda(sharq::launch_prep(x.data_ptr(), x.stride(0), out.data_ptr(), M, K, dtype_code(x),
                                (int)fmt, (int)pattern, (int)bb, (int)rb, dbg,
                                c10::cuda::getCurrentCUDAStream().stream(), (int)force_v,
                                (int)force_cl, (int)x_frag),
             "prep");
}

// prep with an explicit kernel configuration (benchmarks, configuration-equivalence tests)
void prep_cfg(const at::Tensor& x, at::Tensor& out, int64_t fmt, int64_t pattern, int64_t bb,
              int64_t rb, int64_t v, int64_t cl) {
  prep_impl(x, out, fmt, pattern, bb, rb, sharq::PrepDebug{}, v, cl);
}

void prep(const at::Tensor& x, at::Tensor& out, int64_t fmt, int64_t pattern, int64_t bb,
          int64_t rb, int64_t x_frag) {
  prep_impl(x, out, fmt, pattern, bb, rb, sharq::PrepDebug{}, 0, 0, x_frag);
}

void prep_debug(const at::Tensor& x, at::Tensor& out, at::Tensor& mask, at::Tensor& bb_codes,
                at::Tensor& bb_scales, at::Tensor& res_codes, at::Tensor& res_scales,
                at::Tensor& tscales, int64_t fmt, int64_t pattern, int64_t bb, int64_t rb) {
  for (const at::Tensor* t : {&mask, &bb_codes, &bb_scales, &res_codes, &res_scales})
    TORCH_CHECK(t->scalar_type() == at::kByte && t->is_contiguous(), "sharq: debug outputs must be contiguous uint8");
  TORCH_CHECK(tscales.scalar_type() == at::kFloat && tscales.is_contiguous(), "sharq: tscales must be float32");
  sharq::PrepDebug dbg;
  dbg.mask = opt_u8(mask);
  dbg.bb_codes = opt_u8(bb_codes);
  dbg.bb_scales = opt_u8(bb_scales);
  dbg.res_codes = opt_u8(res_codes);
  dbg.res_scales = opt_u8(res_scales);
  dbg.tscales = tscales.numel() ? tscales.data_ptr<float>() : nullptr;
  prep_impl(x, out, fmt, pattern, bb, rb, dbg);
}

// RMSNorm (+ residual add) and the preparation in one kernel (launch_prep_norm). residual and
// residual_out: both given or both absent; x, residual: rows with unit stride (16-byte
// aligned), residual_out, out: contiguous [M, K]; weight [K], all of x's dtype. v: chunks a
// thread (1, 2), cl: CTAs a row (1..8, at v = 1); 0 = automatic; an explicit configuration for
// benchmarks and tests.
void prep_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
               const std::optional<at::Tensor>& residual_out, const at::Tensor& weight, double eps,
               at::Tensor& out, int64_t fmt, int64_t pattern, int64_t bb, int64_t rb, int64_t v, int64_t cl,
               int64_t x_frag) {
  check_x_frag(x_frag);
  check_rows(x, out);
  const int M = x.size(0), K = x.size(1);
  TORCH_CHECK(weight.is_cuda() && weight.is_contiguous() && weight.numel() == K &&
                  weight.scalar_type() == x.scalar_type(),
              "sharq: norm weight must be a contiguous [K] tensor of x's dtype");
  TORCH_CHECK(residual.has_value() == residual_out.has_value(), "sharq: residual and residual_out go together");
  sharq::PrepNorm nrm;
  nrm.weight = weight.data_ptr();
  nrm.eps = (float)eps;
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    const at::Tensor& ro = *residual_out;
    check_rows(r, ro);
    TORCH_CHECK(r.sizes() == x.sizes() && ro.sizes() == x.sizes() && r.scalar_type() == x.scalar_type() &&
                    ro.scalar_type() == x.scalar_type(),
                "sharq: residual / residual_out must match x");
    nrm.residual = r.data_ptr();
    nrm.res_stride = r.stride(0);
    nrm.residual_out = ro.data_ptr();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(sharq::launch_prep_norm(x.data_ptr(), x.stride(0), out.data_ptr(), M, K, dtype_code(x), (int)fmt,
                                     (int)pattern, (int)bb, (int)rb, nrm,
                                     c10::cuda::getCurrentCUDAStream().stream(), (int)v, (int)cl, (int)x_frag),
             "prep_norm");
}

// x [M, 2K] = [gate | up] rows (unit stride, 16-byte aligned) and out [M, K] contiguous, one dtype
void check_gate_up(const at::Tensor& x, const at::Tensor& out, const char* op) {
  TORCH_CHECK(x.is_cuda() && out.is_cuda() && x.dim() == 2 && out.dim() == 2 && x.stride(1) == 1 &&
                  out.is_contiguous() && x.scalar_type() == out.scalar_type(),
              "sharq: ", op, " takes [M, 2K] rows and a contiguous [M, K] output of one dtype");
  TORCH_CHECK(x.size(0) == out.size(0) && x.size(1) == 2 * out.size(1), "sharq: x must be [M, 2K] for out [M, K]");
  TORCH_CHECK((reinterpret_cast<uintptr_t>(x.data_ptr()) % 16) == 0 && (x.stride(0) * x.element_size()) % 16 == 0 &&
                  (out.size(1) * out.element_size()) % 16 == 0,
              "sharq: x rows and halves must be 16-byte aligned");
}

// SiLU * mul and the preparation in one kernel (launch_prep_silu_mul): x [M, 2K] = [gate | up]
// rows (unit stride, 16-byte aligned), out [M, K]. v / cl: an explicit configuration (0: auto).
void prep_silu_mul(const at::Tensor& x, at::Tensor& out, int64_t fmt, int64_t pattern, int64_t bb,
                   int64_t rb, int64_t v, int64_t cl, int64_t x_frag) {
  check_x_frag(x_frag);
  check_gate_up(x, out, "prep_silu_mul");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(sharq::launch_prep_silu_mul(x.data_ptr(), x.stride(0), out.data_ptr(), (int)out.size(0),
                                         (int)out.size(1), dtype_code(x), (int)fmt, (int)pattern, (int)bb, (int)rb,
                                         c10::cuda::getCurrentCUDAStream().stream(), (int)v, (int)cl, (int)x_frag),
             "prep_silu_mul");
}

// SiLU * mul alone (launch_silu_mul; the tests' view of the fused kernel's producer), operands
// as prep_silu_mul's.
void silu_mul(const at::Tensor& x, at::Tensor& out) {
  check_gate_up(x, out, "silu_mul");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(sharq::launch_silu_mul(x.data_ptr(), x.stride(0), out.data_ptr(), (int)out.size(0), (int)out.size(1),
                                    dtype_code(x), c10::cuda::getCurrentCUDAStream().stream()),
             "silu_mul");
}

// Shared checks of the GEMM ops; returns the bias pointer (or null).
const void* check_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                       const at::Tensor& tensor_scale, const std::optional<at::Tensor>& bias,
                       at::Tensor& out, int64_t n_pad) {
  check_rows(x, out);
  TORCH_CHECK(qweight.is_cuda() && scales.is_cuda() && tensor_scale.is_cuda(), "sharq: weights must be on CUDA");
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous(), "sharq: packed weights must be contiguous");
  TORCH_CHECK(tensor_scale.scalar_type() == at::kFloat, "sharq: tensor_scale must be float32");
  const int64_t M = x.size(0), K = x.size(1), n_valid = out.size(1);
  TORCH_CHECK(qweight.numel() * qweight.element_size() == n_pad * K / 2, "sharq: qweight size mismatch");
  TORCH_CHECK(n_valid <= n_pad && out.size(0) == M, "sharq: out shape mismatch");
  // the stream kernel addresses up to 24 rows of x (its row groups) with a 32-bit element offset
  TORCH_CHECK(x.stride(0) <= INT32_MAX / 32, "sharq: x row stride ", x.stride(0), " too large (at most ", INT32_MAX / 32,
              " elements)");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() && bias->numel() >= n_valid,
                "sharq: bad bias");
    return bias->data_ptr();
  }
  return nullptr;
}

// x_frag: x holds x_hat in fragment order where sharq::xhat_fragment_rows(M, x_frag); then it must
// be contiguous and the kernel for M (variant, kGemmAuto resolved for the layer) the stream kernel
void check_frag_x(const at::Tensor& x, int64_t x_frag, int64_t variant, int64_t n_pad) {
  check_x_frag(x_frag);
  const int M = (int)x.size(0);
  if (!sharq::xhat_fragment_rows(M, (int)x_frag)) return;
  TORCH_CHECK(x.is_contiguous(), "sharq: a fragment-ordered x_hat must be contiguous");
  const c10::cuda::CUDAGuard guard(x.device());
  const int kernel = variant == sharq::kGemmAuto ? sharq::gemm_auto_variant(M, (int)n_pad, sharq::sm_count()) : (int)variant;
  TORCH_CHECK(kernel == sharq::kGemmStream, "sharq: a fragment-ordered x_hat (M = ", M, ", x_frag = ", x_frag,
              ") is read by the stream kernel only, but the GEMM of ", n_pad, " weight rows runs GemmVariant ",
              kernel, variant == sharq::kGemmAuto ? " by itself" : " (forced)", " at ", M,
              " rows; kernels.dispatch.xhat_fragment_limit gives the x_frag a layer may ask for");
}

// GEMM for any M (csrc/gemm.cu, launch_gemm_mma: the kernel for M)
void gemm_mma(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
              const at::Tensor& tensor_scale, const std::optional<at::Tensor>& bias, at::Tensor& out,
              int64_t n_pad, int64_t wblock, int64_t x_frag) {
  const void* bptr = check_gemm(x, qweight, scales, tensor_scale, bias, out, n_pad);
  check_frag_x(x, x_frag, sharq::kGemmAuto, n_pad);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(sharq::launch_gemm_mma(x.data_ptr(), x.stride(0), qweight.data_ptr(), scales.data_ptr(),
                                    tensor_scale.data_ptr<float>(), bptr, out.data_ptr(), out.stride(0),
                                    x.size(0), (int)n_pad, out.size(1), x.size(1), (int)wblock, dtype_code(x),
                                    c10::cuda::getCurrentCUDAStream().stream(), sharq::kGemmAuto, (int)x_frag),
             "gemm_mma");
}

// One forced GEMM kernel (sharq_kernels.h, GemmVariant): benchmarks and tests
void gemm_mma_cfg(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                  const at::Tensor& tensor_scale, const std::optional<at::Tensor>& bias, at::Tensor& out,
                  int64_t n_pad, int64_t wblock, int64_t variant, int64_t x_frag) {
  const void* bptr = check_gemm(x, qweight, scales, tensor_scale, bias, out, n_pad);
  TORCH_CHECK(variant == sharq::kGemmAuto || variant == sharq::kGemmStream || variant == sharq::kGemmTile ||
                  variant == sharq::kGemmWgmma || variant == sharq::kGemmWgmmaRs,
              "sharq: GEMM variant ", variant, " out of range");
  TORCH_CHECK(variant != sharq::kGemmWgmmaRs || x.size(0) == 0 ||
                  (x.size(0) <= sharq::kGemmWgmmaRsLimitM && sharq::gemm_wgmma_rs_split(x.size(0), x.size(1)) > 0),
              "sharq: the register-source wgmma kernel takes M <= ", (int)sharq::kGemmWgmmaRsLimitM,
              " rows whose x_hat share of K fits a CTA's shared memory over at most 8 CTAs; got M = ", x.size(0),
              ", K = ", x.size(1));
  check_frag_x(x, x_frag, variant, n_pad);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(sharq::launch_gemm_mma(x.data_ptr(), x.stride(0), qweight.data_ptr(), scales.data_ptr(),
                                    tensor_scale.data_ptr<float>(), bptr, out.data_ptr(), out.stride(0),
                                    x.size(0), (int)n_pad, out.size(1), x.size(1), (int)wblock, dtype_code(x),
                                    c10::cuda::getCurrentCUDAStream().stream(), (int)variant, (int)x_frag),
             "gemm_mma_cfg");
}

// w [N_pad, K] (x's dtype) = e2m1 * block scale, exact in 16 bits (the large-M path's workspace)
void dequant(const at::Tensor& qweight, const at::Tensor& scales, at::Tensor& w, int64_t wblock) {
  TORCH_CHECK(w.is_cuda() && w.is_contiguous() && w.dim() == 2, "sharq: bad dequant output");
  const int N = w.size(0), K = w.size(1);
  TORCH_CHECK(qweight.numel() * qweight.element_size() == (int64_t)N * K / 2, "sharq: qweight size mismatch");
  const c10::cuda::CUDAGuard guard(w.device());
  check_cuda(sharq::launch_dequant(qweight.data_ptr(), scales.data_ptr(), w.data_ptr(), N, K,
                                   (int)wblock, dtype_code(w),
                                   c10::cuda::getCurrentCUDAStream().stream()),
             "dequant");
}

}  // namespace

TORCH_LIBRARY(sharq_C, m) {
  m.def("prep(Tensor x, Tensor(a!) out, int fmt, int pattern, int bb, int rb, int x_frag=0) -> ()");
  m.def("prep_cfg(Tensor x, Tensor(a!) out, int fmt, int pattern, int bb, int rb, int v, int cl) -> ()");
  m.def(
      "prep_debug(Tensor x, Tensor(a!) out, Tensor(b!) mask, Tensor(c!) bb_codes, "
      "Tensor(d!) bb_scales, Tensor(e!) res_codes, Tensor(f!) res_scales, Tensor(g!) tscales, "
      "int fmt, int pattern, int bb, int rb) -> ()");
  m.def(
      "prep_silu_mul(Tensor x, Tensor(a!) out, int fmt, int pattern, int bb, int rb, int v, int cl, "
      "int x_frag=0) -> ()");
  m.def("silu_mul(Tensor x, Tensor(a!) out) -> ()");
  m.def(
      "prep_norm(Tensor x, Tensor? residual, Tensor(a!)? residual_out, Tensor weight, float eps, "
      "Tensor(b!) out, int fmt, int pattern, int bb, int rb, int v=0, int cl=0, int x_frag=0) -> ()");
  m.def(
      "gemm_mma(Tensor x, Tensor qweight, Tensor scales, Tensor tensor_scale, Tensor? bias, "
      "Tensor(a!) out, int n_pad, int wblock, int x_frag=0) -> ()");
  m.def(
      "gemm_mma_cfg(Tensor x, Tensor qweight, Tensor scales, Tensor tensor_scale, Tensor? bias, "
      "Tensor(a!) out, int n_pad, int wblock, int variant, int x_frag=0) -> ()");
  m.def("dequant(Tensor qweight, Tensor scales, Tensor(a!) w, int wblock) -> ()");
}

TORCH_LIBRARY_IMPL(sharq_C, CUDA, m) {
  m.impl("prep", &prep);
  m.impl("prep_cfg", &prep_cfg);
  m.impl("prep_debug", &prep_debug);
  m.impl("prep_norm", &prep_norm);
  m.impl("prep_silu_mul", &prep_silu_mul);
  m.impl("silu_mul", &silu_mul);
  m.impl("gemm_mma", &gemm_mma);
  m.impl("gemm_mma_cfg", &gemm_mma_cfg);
  m.impl("dequant", &dequant);
}

// `import sharq_vllm._C` (setup.py build) just loads the library; the ops register above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
