// Pixel-shift products T(X) on CPU: one (batch, channel) plane per work item.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../parallel.h"
#include "../pixel_shift_products.h"

namespace translution_ext {

namespace {

at::Tensor pixel_shift_forward_cpu(const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const auto shifts = check_pixel_shift(x_in, shifts_in, "pixel_shift_products: ");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = shifts.size() / 2;
  at::Tensor out = at::empty({B, S * C, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel_for_items(0, B * C, S * H * W, [&](int64_t first, int64_t last) {
      for (int64_t bc = first; bc < last; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const scalar_t* plane = xp + bc * H * W;
        for (int64_t s = 0; s < S; ++s) {
          scalar_t* o = op + ((b * S + s) * C + c) * H * W;
          const int64_t dy = shifts[2 * s], dx = shifts[2 * s + 1];
          for (int64_t y = 0; y < H; ++y)
            for (int64_t xx = 0; xx < W; ++xx)
              o[y * W + xx] = plane[y * W + xx] * shifted(plane, H, W, y, xx, dy, dx);
        }
      }
    });
  });
  return out;
}

at::Tensor pixel_shift_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const auto shifts = check_pixel_shift(x_in, shifts_in, "pixel_shift_products_backward: ");
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = shifts.size() / 2;
  check_pixel_shift_grad(x, g, S, "pixel_shift_products_backward: ");
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    parallel_for_items(0, B * C, S * H * W, [&](int64_t first, int64_t last) {
      for (int64_t bc = first; bc < last; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const scalar_t* plane = xp + bc * H * W;
        const scalar_t* grad = gp + (b * S * C + c) * H * W;
        for (int64_t y = 0; y < H; ++y)
          for (int64_t xx = 0; xx < W; ++xx)
            dp[bc * H * W + y * W + xx] = static_cast<scalar_t>(
                pixel_shift_grad<acc_t>(plane, grad, C * H * W, S, shifts.data(), H, W, y, xx));
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("pixel_shift_products", &pixel_shift_forward_cpu);
  m.impl("pixel_shift_products_backward", &pixel_shift_backward_cpu);
}

}  // namespace translution_ext
