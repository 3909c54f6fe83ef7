// X-volution's folding routine: re-parameterises the training branches into one
// convolution (spec: xvolution.md).  The routine is ATen arithmetic on small weight tensors, registered once for
// every device (CompositeExplicitAutograd).
#include <torch/library.h>

#include "checks.h"

namespace translution_ext {

namespace {

constexpr const char* kFold = "xvolution_fold: ";

// Folds the branches: branch i is a conv weight (Co, Ci_i, k, k) followed by BatchNorm with
// (gamma, beta, mean, var, eps); it reads input channels [in_offsets[i], in_offsets[i] + Ci_i)
// of the concatenated input.  Returns W* (Co, in_channels, K, K) and b* (Co,).
std::tuple<at::Tensor, at::Tensor> xvolution_fold(at::TensorList weights, at::TensorList gammas,
                                                  at::TensorList betas, at::TensorList means,
                                                  at::TensorList vars, at::ArrayRef<double> eps,
                                                  at::IntArrayRef in_offsets, int64_t in_channels,
                                                  int64_t kernel_size) {
  const size_t n = weights.size();
  TORCH_CHECK_VALUE(n > 0, kFold, "weights must hold at least one branch");
  TORCH_CHECK_VALUE(gammas.size() == n && betas.size() == n && means.size() == n && vars.size() == n &&
                        eps.size() == n && in_offsets.size() == n,
                    kFold, "weights, gammas, betas, means, vars, eps and in_offsets must have one entry per "
                    "branch (", n, ")");
  TORCH_CHECK_VALUE(kernel_size % 2 == 1 && kernel_size > 0, kFold, "kernel_size must be odd, got ", kernel_size);
  const at::Tensor& first = weights[0];
  TORCH_CHECK_TYPE(first.scalar_type() == at::kFloat || first.scalar_type() == at::kDouble, kFold,
                   "weights must be float32 or float64, got ", first.scalar_type());
  const int64_t co = first.size(0);
  at::Tensor w_star = at::zeros({co, in_channels, kernel_size, kernel_size}, first.options());
  at::Tensor b_star = at::zeros({co}, first.options());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 4 && w.size(0) == co && w.size(2) == w.size(3), kFold, "weights[", i,
                      "] must have shape (Co=", co, ", Ci, k, k), got ", shape_str(w));
    TORCH_CHECK_TYPE(w.scalar_type() == first.scalar_type() && w.device() == first.device(), kFold, "weights[",
                     i, "] must have the dtype and device of weights[0]");
    const int64_t k = w.size(2);
    TORCH_CHECK_VALUE(k % 2 == 1 && k <= kernel_size, kFold, "weights[", i, "] has a ", k, "x", k,
                      " kernel; every branch kernel must be odd and at most kernel_size = ", kernel_size);
    TORCH_CHECK_VALUE(in_offsets[i] >= 0 && in_offsets[i] + w.size(1) <= in_channels, kFold, "weights[", i,
                      "] reads input channels [", in_offsets[i], ", ", in_offsets[i] + w.size(1),
                      ") outside in_channels = ", in_channels);
    for (const auto* stat : {&gammas[i], &betas[i], &means[i], &vars[i]})
      TORCH_CHECK_VALUE(stat->dim() == 1 && stat->size(0) == co, kFold, "the BatchNorm tensors of branch ", i,
                        " must have shape (Co,) = (", co, ",), got ", shape_str(*stat));
    // BN(conv(x)) = t * conv(x) + (beta - mean * t), t = gamma / sqrt(var + eps).
    const at::Tensor t = gammas[i].to(w.scalar_type()) / (vars[i].to(w.scalar_type()) + eps[i]).sqrt();
    const int64_t pad = (kernel_size - k) / 2;
    w_star.narrow(1, in_offsets[i], w.size(1))
        .narrow(2, pad, k)
        .narrow(3, pad, k)
        .add_(w * t.view({co, 1, 1, 1}));
    b_star.add_(betas[i].to(w.scalar_type()) - means[i].to(w.scalar_type()) * t);
  }
  return {w_star, b_star};
}

}  // namespace

}  // namespace translution_ext

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def(
      "xvolution_fold(Tensor[] weights, Tensor[] gammas, Tensor[] betas, Tensor[] means, Tensor[] vars, "
      "float[] eps, int[] in_offsets, int in_channels, int kernel_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(translution_ext, CompositeExplicitAutograd, m) {
  m.impl("xvolution_fold", &translution_ext::xvolution_fold);
}
