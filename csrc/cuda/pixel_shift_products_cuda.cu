// Pixel-shift products T(X) on CUDA: one thread per output element (forward) or per
// input element (backward, which gathers its terms: no atomics, deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.cuh"

#include "../pixel_shift_products.h"

namespace translution_ext {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxShifts = 64;

struct Shifts {
  int64_t s;
  int64_t d[2 * kMaxShifts];
};

Shifts to_shifts(const std::vector<int64_t>& v) {
  TORCH_CHECK_VALUE(v.size() / 2 <= kMaxShifts, "pixel_shift_products: at most ", kMaxShifts,
                    " shifts are supported on CUDA, got ", v.size() / 2);
  Shifts s{static_cast<int64_t>(v.size() / 2), {}};
  for (size_t i = 0; i < v.size(); ++i) s.d[i] = v[i];
  return s;
}

template <typename scalar_t>
__global__ void pixel_shift_forward_kernel(const scalar_t* x, scalar_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                               Shifts sh) {
  const int64_t total = B * sh.s * C * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = i % W, y = (i / W) % H, c = (i / (H * W)) % C, s = (i / (C * H * W)) % sh.s,
                  b = i / (sh.s * C * H * W);
    const scalar_t* plane = x + (b * C + c) * H * W;
    out[i] = plane[y * W + xx] * shifted(plane, H, W, y, xx, sh.d[2 * s], sh.d[2 * s + 1]);
  }
}

template <typename scalar_t>
__global__ void pixel_shift_backward_kernel(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t B, int64_t C, int64_t H,
                                int64_t W, Shifts sh) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = B * C * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = i % W, y = (i / W) % H, c = (i / (H * W)) % C, b = i / (C * H * W);
    const scalar_t* plane = x + (b * C + c) * H * W;
    dx[i] = static_cast<scalar_t>(
        pixel_shift_grad<acc_t>(plane, g + (b * sh.s * C + c) * H * W, C * H * W, sh.s, sh.d, H, W, y, xx));
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

at::Tensor pixel_shift_forward_cuda(const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const Shifts sh = to_shifts(check_pixel_shift(x_in, shifts_in, "pixel_shift_products: "));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({B, sh.s * C, H, W}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products", [&] {
    launch_kernel<pixel_shift_forward_kernel<scalar_t>>(blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream())(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, C, H, W, sh);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor pixel_shift_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const Shifts sh = to_shifts(check_pixel_shift(x_in, shifts_in, "pixel_shift_products_backward: "));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_pixel_shift_grad(x, g, sh.s, "pixel_shift_products_backward: ");
  at::Tensor dx = at::empty_like(x);
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products_backward", [&] {
    launch_kernel<pixel_shift_backward_kernel<scalar_t>>(blocks_for(dx.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream())(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), B, C, H, W, sh);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("pixel_shift_products", &pixel_shift_forward_cuda);
  m.impl("pixel_shift_products_backward", &pixel_shift_backward_cuda);
}

}  // namespace translution_ext
