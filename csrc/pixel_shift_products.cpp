// Pixel-shift products T(X) of X-volution: schemas and the checks shared by the CPU and
// CUDA kernels (spec: xvolution.md; the rule is in pixel_shift_products.h).
#include "pixel_shift_products.h"

#include <torch/library.h>

#include "checks.h"

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def("pixel_shift_products(Tensor x, int[] shifts) -> Tensor");
  m.def("pixel_shift_products_backward(Tensor grad_out, Tensor x, int[] shifts) -> Tensor");
}

namespace translution_ext {

std::vector<int64_t> check_pixel_shift(const at::Tensor& x, at::IntArrayRef shifts, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, "x must be a 4-D tensor (B, C, H, W), got shape ", shape_str(x));
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
                   "x must have dtype float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK_VALUE(!shifts.empty() && shifts.size() % 2 == 0, op,
                    "shifts must be a non-empty flat list of (dy, dx) pairs, got ", shifts.size(), " values");
  return shifts.vec();
}

void check_pixel_shift_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t num_shifts, const char* op) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, num_shifts * C, H, W}), op,
                    "grad_out must have shape (B, S*C, H, W) = (", B, ", ", num_shifts * C, ", ", H, ", ", W,
                    "), got ", shape_str(grad_out));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), op, "grad_out must have the dtype of x (",
                   x.scalar_type(), "), got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), op, "grad_out must be on x's device (", x.device(), ")");
}

}  // namespace translution_ext
