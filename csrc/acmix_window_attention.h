// ACmix's windowed attention op: shared geometry, checks and the reflection rule (spec: acmix.md).
//
// For output pixel (yo, xo) of head n, centre c = (yo*s, xo*s) and window position u = (du, dv):
//   p_u     = reflect(c + (du, dv) - ka/2)
//   logit_u = scale * sum_d q[c, d] * (k[p_u, d] + pe[c, d] - pe[p_u, d]);  a = softmax_u(logit)
//   out[d]  = sum_u a_u * v[p_u, d]
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

namespace translution_ext {

struct AcmixGeometry {
  int64_t B, C, H, W, heads, hd, window, stride, Ho, Wo;
};

// Checks q, k, v (B, C, H, W), pe (hd, H, W), heads | C, odd window, stride >= 1, H and W
// larger than window // 2 (reflection padding); returns the geometry.
AcmixGeometry check_acmix(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pe,
                          int64_t heads, int64_t window, int64_t stride);

// Checks grad_out (B, C, Ho, Wo, q's dtype) and attn (B, heads, window², Ho, Wo, q's opmath dtype).
void check_acmix_backward(const AcmixGeometry& g, const at::Tensor& q, const at::Tensor& grad_out,
                          const at::Tensor& attn);

// Reflection padding without repeating the edge: -1 -> 1, n -> n - 2.  Valid for i in (-n, 2n - 1).
C10_HOST_DEVICE inline int64_t reflect(int64_t i, int64_t n) {
  return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

}  // namespace translution_ext
