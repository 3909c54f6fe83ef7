// ACmix windowed attention: op schemas and argument checks shared by the CPU and CUDA kernels.
#include "acmix_window_attention.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "checks.h"

namespace translution_ext {

namespace {
constexpr const char* kOp = "acmix_window_attention: ";
}

AcmixGeometry check_acmix(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pe,
                          int64_t heads, int64_t window, int64_t stride) {
  TORCH_CHECK_VALUE(q.dim() == 4, kOp, "q must be a 4-D tensor (B, C, H, W), got shape ", shape_str(q));
  const auto t = q.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, kOp,
                   "q must have dtype float16, bfloat16, float32 or float64, got ", t);
  for (const auto& [name, x] : {std::pair<const char*, const at::Tensor&>{"k", k}, {"v", v}}) {
    TORCH_CHECK_VALUE(x.sizes() == q.sizes(), kOp, name, " must have the shape of q ", shape_str(q), ", got ",
                      shape_str(x));
    TORCH_CHECK_TYPE(x.scalar_type() == t, kOp, name, " must have the dtype of q (", t, "), got ", x.scalar_type());
  }
  TORCH_CHECK_VALUE(heads >= 1 && q.size(1) % heads == 0, kOp, "heads must divide C == ", q.size(1), ", got ", heads);
  const int64_t hd = q.size(1) / heads;
  TORCH_CHECK_VALUE(pe.dim() == 3 && pe.size(0) == hd && pe.size(1) == q.size(2) && pe.size(2) == q.size(3), kOp,
                    "pe must have shape (hd, H, W) = (", hd, ", ", q.size(2), ", ", q.size(3), "), got ", shape_str(pe));
  TORCH_CHECK_TYPE(pe.scalar_type() == t, kOp, "pe must have the dtype of q (", t, "), got ", pe.scalar_type());
  TORCH_CHECK_VALUE(window >= 1 && window % 2 == 1, kOp, "window must be a positive odd int, got ", window);
  TORCH_CHECK_VALUE(stride >= 1, kOp, "stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(window / 2 < q.size(2) && window / 2 < q.size(3), kOp,
                    "H and W must exceed window // 2 == ", window / 2, " (reflection padding), got ", q.size(2),
                    " x ", q.size(3));
  for (const auto* x : {&k, &v, &pe})
    TORCH_CHECK_VALUE(x->device() == q.device(), kOp, "all inputs must be on q's device (", q.device(), ")");
  const int64_t H = q.size(2), W = q.size(3);
  return {q.size(0), q.size(1), H, W, heads, hd, window, stride, (H - 1) / stride + 1, (W - 1) / stride + 1};
}

void check_acmix_backward(const AcmixGeometry& g, const at::Tensor& q, const at::Tensor& grad_out,
                          const at::Tensor& attn) {
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({g.B, g.C, g.Ho, g.Wo}), kOp, "grad_out must have shape (",
                    g.B, ", ", g.C, ", ", g.Ho, ", ", g.Wo, "), got ", shape_str(grad_out));
  TORCH_CHECK_VALUE(attn.sizes() == at::IntArrayRef({g.B, g.heads, g.window * g.window, g.Ho, g.Wo}), kOp,
                    "attn must have shape (B, heads, window², Ho, Wo), got ", shape_str(attn));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == q.scalar_type(), kOp, "grad_out must have the dtype of q (",
                   q.scalar_type(), "), got ", grad_out.scalar_type());
  const auto acc = at::toOpMathType(q.scalar_type());
  TORCH_CHECK_TYPE(attn.scalar_type() == acc, kOp, "attn must have dtype ", acc, " (the forward's), got ",
                   attn.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == q.device() && attn.device() == q.device(), kOp,
                    "grad_out and attn must be on q's device (", q.device(), ")");
}

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def("acmix_window_attention(Tensor q, Tensor k, Tensor v, Tensor pe, int heads, int window, int stride, "
        "float scale) -> (Tensor, Tensor)");
  m.def("acmix_window_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor pe, Tensor attn, "
        "int heads, int window, int stride, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace translution_ext
