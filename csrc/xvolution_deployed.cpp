// The deployed X-volution: schema, the checks shared by the CPU and CUDA kernels, and the
// device-generic parts (the X part's convolution, the T(X) part's weight matrix).
#include "xvolution_deployed.h"

#include <torch/library.h>

#include "checks.h"
#include "pixel_shift_products.h"

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def("xvolution_deployed(Tensor x, Tensor weight, Tensor? bias, int[] shifts, int stride, "
        "int pssa_kernel_size) -> Tensor");
}

namespace translution_ext {

XvolutionDeployedGeometry check_xvolution_deployed(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, at::IntArrayRef shifts,
                                                   int64_t stride, int64_t pssa_kernel_size, const char* op) {
  std::vector<int64_t> flat = check_pixel_shift(x, shifts, op);
  const int64_t S = static_cast<int64_t>(flat.size() / 2), C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1, op,
                    "weight must be a 4-D tensor (Co, C*(1 + S), K, K) with an odd K, got ", shape_str(weight));
  const int64_t K = weight.size(2), Co = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == C * (1 + S), op, "weight must have C*(1 + S) = ", C * (1 + S),
                    " input channels (x has C = ", C, " channels, S = ", S, " shifts), got weight of shape ",
                    shape_str(weight));
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, "weight must have the dtype of x (",
                   x.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, "weight must be on x's device (", x.device(), "), got ",
                    weight.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == Co, op, "bias must have shape (Co,) = (", Co,
                      ",), got ", shape_str(*bias));
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, "bias must have the dtype of x (",
                     x.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, "bias must be on x's device (", x.device(), "), got ",
                      bias->device());
  }
  TORCH_CHECK_VALUE(stride >= 1, op, "stride must be a positive int, got ", stride);
  TORCH_CHECK_VALUE(pssa_kernel_size >= 1 && pssa_kernel_size % 2 == 1 && pssa_kernel_size <= K, op,
                    "pssa_kernel_size must be odd and in [1, K = ", K, "], got ", pssa_kernel_size);
  const int64_t H = x.size(2), W = x.size(3);
  // padding K // 2: the output is ceil(H / stride) x ceil(W / stride), the same for the Ka conv.
  const auto out_size = [stride](int64_t n) { return n == 0 ? 0 : (n - 1) / stride + 1; };
  return {x.size(0), C, H, W, Co, K, pssa_kernel_size, stride, out_size(H), out_size(W), S, std::move(flat)};
}

at::Tensor xvolution_deployed_conv_part(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const XvolutionDeployedGeometry& g) {
  return at::conv2d(x, weight.narrow(1, 0, g.C), bias, {g.stride, g.stride}, {g.K / 2, g.K / 2}).contiguous();
}

at::Tensor xvolution_deployed_pssa_weight(const at::Tensor& weight, const XvolutionDeployedGeometry& g) {
  const int64_t off = (g.K - g.Ka) / 2;
  return weight.narrow(1, g.C, g.S * g.C).narrow(2, off, g.Ka).narrow(3, off, g.Ka).contiguous();
}

}  // namespace translution_ext
