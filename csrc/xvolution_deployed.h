// The deployed X-volution: the folded single convolution Conv_K(concat(X, T(X)); W*, b*)
// computed without T(X) or the concatenation (spec: xvolution.md, "Re-parameterisation").
//
// W* (Co, C*(1 + S), K, K) splits into the X part W*[:, :C] (a K x K conv, run by ATen) and the
// T(X) part W*[:, C:], which the fold leaves zero outside the centre Ka x Ka taps:
//   Y = Conv_K(X; W*[:, :C], b*) + Conv_Ka(T(X); W*[:, C:, centre Ka x Ka])
// The kernels compute the second term without T(X) of the whole batch: on CPU a GEMM fused with the
// products per block of rows or group of small images (Ka = 1) or oneDNN's convolution on slabs of
// images (Ka > 1); on CUDA an implicit GEMM whose operand (the products X[c, q] * X[c, q + d_s] at the
// taps' input positions) lives in shared memory.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace translution_ext {

struct XvolutionDeployedGeometry {
  int64_t B, C, H, W, Co, K, Ka, stride, Ho, Wo, S;
  std::vector<int64_t> shifts;  // (dy, dx) flattened
  int64_t reduction() const { return S * C * Ka * Ka; }  // R: rows of the T(X) part's GEMM
};

// Checks every argument (names the argument and the expected value); returns the geometry.
XvolutionDeployedGeometry check_xvolution_deployed(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, at::IntArrayRef shifts,
                                                   int64_t stride, int64_t pssa_kernel_size, const char* op);

// Conv_K(X; W*[:, :C], b*): (B, Co, Ho, Wo), contiguous, x's dtype (ATen's convolution).
at::Tensor xvolution_deployed_conv_part(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const XvolutionDeployedGeometry& g);

// The T(X) part's weight W*[:, C:, centre Ka x Ka]: contiguous (Co, S*C, Ka, Ka), i.e. a (Co, R)
// matrix with column r = ((s*C + c)*Ka + ky)*Ka + kx.
at::Tensor xvolution_deployed_pssa_weight(const at::Tensor& weight, const XvolutionDeployedGeometry& g);

}  // namespace translution_ext
