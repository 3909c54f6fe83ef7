// The deployed X-volution on CPU: both parts run through ATen's convolution (oneDNN), which beats a
// hand-made GEMM here (BLAS called inside at::parallel_for would start nested threads).  The X part
// is the K x K conv of W*[:, :C]; the T(X) part goes slab by slab of images: their products
// X[c, q] * X[c, q + d_s] fill a buffer at most the size of X (one image's T(X) at least), convolved
// with the centre Ka x Ka taps of W*[:, C:] only (the taps the fold left zero are skipped) and added
// to the output.  T(X) of the whole batch and the concatenation are never built.  Half types compute
// in float and round once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../xvolution_deployed.h"

namespace translution_ext {

namespace {

constexpr const char* kOp = "xvolution_deployed: ";

// t[i, s*C + c] = X[b0 + i, c] * S_{d_s}(X[b0 + i, c]) for the images [b0, b1): T(X) of a slab of images.
// Per row, the columns whose neighbour is inside the image run a branch-free inner loop.
template <typename T>
void fill_products(const T* x, const XvolutionDeployedGeometry& g, int64_t b0, int64_t b1, T* t) {
  const int64_t plane_size = g.H * g.W;
  at::parallel_for(0, (b1 - b0) * g.S * g.C, 1, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t c = item % g.C, s = (item / g.C) % g.S, b = b0 + item / (g.C * g.S);
      const int64_t dy = g.shifts[2 * s], dx = g.shifts[2 * s + 1];
      const T* plane = x + (b * g.C + c) * plane_size;
      T* o = t + item * plane_size;
      const int64_t lo = std::clamp<int64_t>(-dx, 0, g.W), hi = std::clamp<int64_t>(g.W - dx, lo, g.W);
      for (int64_t y = 0; y < g.H; ++y, o += g.W) {
        if (y + dy < 0 || y + dy >= g.H) {
          std::fill(o, o + g.W, T(0));
          continue;
        }
        const T* p = plane + y * g.W;
        const T* q = plane + (y + dy) * g.W;
        std::fill(o, o + lo, T(0));
        for (int64_t ix = lo; ix < hi; ++ix) o[ix] = p[ix] * q[ix + dx];
        std::fill(o + hi, o + g.W, T(0));
      }
    }
  });
}

at::Tensor xvolution_deployed_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                  const std::optional<at::Tensor>& bias_in, at::IntArrayRef shifts,
                                  int64_t stride, int64_t pssa_kernel_size) {
  const auto g = check_xvolution_deployed(x_in, weight_in, bias_in, shifts, stride, pssa_kernel_size, kOp);
  const auto compute = at::toOpMathType(x_in.scalar_type());
  const at::Tensor x = x_in.to(compute).contiguous(), weight = weight_in.to(compute);
  const std::optional<at::Tensor> bias =
      bias_in.has_value() ? std::optional<at::Tensor>(bias_in->to(compute)) : std::nullopt;
  at::Tensor y = xvolution_deployed_conv_part(x, weight, bias, g);
  if (y.numel() == 0) return y.to(x_in.scalar_type());
  const at::Tensor w_t = xvolution_deployed_pssa_weight(weight, g);
  // Slabs of images whose T(X) together is at most the size of X (one image at least), each run
  // through ATen's convolution (oneDNN) with the centre Ka x Ka taps only.
  const int64_t slab = std::max<int64_t>(1, g.B / g.S);
  at::Tensor t_buffer = at::empty({std::min(slab, g.B), g.S * g.C, g.H, g.W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(compute, "xvolution_deployed", [&] {
    for (int64_t b0 = 0; b0 < g.B; b0 += slab) {
      const int64_t b1 = std::min(g.B, b0 + slab);
      at::Tensor t = t_buffer.narrow(0, 0, b1 - b0);
      fill_products(x.const_data_ptr<scalar_t>(), g, b0, b1, t.mutable_data_ptr<scalar_t>());
      y.narrow(0, b0, b1 - b0).add_(at::conv2d(t, w_t, {}, {g.stride, g.stride}, {g.Ka / 2, g.Ka / 2}));
    }
  });
  return y.to(x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) { m.impl("xvolution_deployed", &xvolution_deployed_cpu); }

}  // namespace translution_ext
