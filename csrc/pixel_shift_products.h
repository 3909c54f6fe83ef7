// Pixel-shift products T(X) of X-volution: shared checks and the per-element rule.
//
//   forward:  out[b, s*C + c, y, x] = X[b, c, y, x] * X[b, c, y + dy_s, x + dx_s]   (0 outside)
//   backward: dX[b, c, y, x] = sum_s g[b, s*C + c, y, x] * X[b, c, y + dy_s, x + dx_s]
//                            + sum_s g[b, s*C + c, y - dy_s, x - dx_s] * X[b, c, y - dy_s, x - dx_s]
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <vector>

namespace translution_ext {

// Checks x (B, C, H, W) and the flattened (dy, dx) shifts; returns the shifts as pairs.
std::vector<int64_t> check_pixel_shift(const at::Tensor& x, at::IntArrayRef shifts, const char* op);

// Checks grad_out of the backward: (B, S*C, H, W), x's dtype and device.
void check_pixel_shift_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t num_shifts, const char* op);

// The value X[y + dy, x + dx] of one plane, 0 outside.
template <typename T>
C10_HOST_DEVICE inline T shifted(const T* plane, int64_t h, int64_t w, int64_t y, int64_t x, int64_t dy,
                                 int64_t dx) {
  const int64_t yy = y + dy, xx = x + dx;
  return (yy >= 0 && yy < h && xx >= 0 && xx < w) ? plane[yy * w + xx] : T(0);
}

// dX[y, x] of one plane (the backward rule above).  grad: the plane of shift 0 of this
// channel; shift s's plane is `shift_stride` further.  d: the flattened (dy, dx) shifts.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline acc_t pixel_shift_grad(const T* plane, const T* grad, int64_t shift_stride, int64_t num_shifts,
                                              const int64_t* d, int64_t h, int64_t w, int64_t y, int64_t x) {
  acc_t sum = 0;
  for (int64_t s = 0; s < num_shifts; ++s) {
    const T* gs = grad + s * shift_stride;
    const int64_t dy = d[2 * s], dx = d[2 * s + 1];
    sum += acc_t(gs[y * w + x]) * acc_t(shifted(plane, h, w, y, x, dy, dx));
    sum += acc_t(shifted(gs, h, w, y, x, -dy, -dx)) * acc_t(shifted(plane, h, w, y, x, -dy, -dx));
  }
  return sum;
}

}  // namespace translution_ext
