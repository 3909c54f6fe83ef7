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

// The value X[y + dy, x + dx] of one plane, 0 outside.
template <typename T>
C10_HOST_DEVICE inline T shifted(const T* plane, int64_t h, int64_t w, int64_t y, int64_t x, int64_t dy,
                                 int64_t dx) {
  const int64_t yy = y + dy, xx = x + dx;
  return (yy >= 0 && yy < h && xx >= 0 && xx < w) ? plane[yy * w + xx] : T(0);
}

}  // namespace translution_ext
