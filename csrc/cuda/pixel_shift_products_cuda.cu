// Pixel-shift products T(X) on CUDA: one thread per output element (forward) or per
// input element (backward, which gathers its terms: no atomics, deterministic).  Any number
// of shifts: they go to the kernels in chunks of kShiftsPerLaunch (shift_chunks.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.cuh"
#include "shift_chunks.cuh"

#include "../pixel_shift_products.h"

namespace translution_ext {

namespace {

constexpr int kThreads = 256;
// out[b, (first + s)*C + c, y, x] for the shifts s of one chunk; S: all shifts.
template <typename scalar_t>
__global__ void pixel_shift_forward_kernel(const scalar_t* x, scalar_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                                           int64_t S, Shifts sh) {
  const int64_t total = B * sh.count * C * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = i % W, y = (i / W) % H, c = (i / (H * W)) % C, s = (i / (C * H * W)) % sh.count,
                  b = i / (sh.count * C * H * W);
    const scalar_t* plane = x + (b * C + c) * H * W;
    out[((b * S + sh.first + s) * C + c) * H * W + y * W + xx] =
        plane[y * W + xx] * shifted(plane, H, W, y, xx, sh.d[2 * s], sh.d[2 * s + 1]);
  }
}

// dx[i] (+)= the chunk's terms of the backward rule; one thread owns each element (no atomics),
// and the chunks run one after another on the stream, so the sum order is fixed.
template <typename scalar_t, typename acc_t>
__global__ void pixel_shift_backward_kernel(const scalar_t* g, const scalar_t* x, acc_t* dx, int64_t B, int64_t C,
                                            int64_t H, int64_t W, int64_t S, Shifts sh) {
  const int64_t total = B * C * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = i % W, y = (i / W) % H, c = (i / (H * W)) % C, b = i / (C * H * W);
    const scalar_t* plane = x + (b * C + c) * H * W;
    const acc_t part = pixel_shift_grad<acc_t>(plane, g + ((b * S + sh.first) * C + c) * H * W, C * H * W, sh.count,
                                               sh.d, H, W, y, xx);
    dx[i] = sh.first == 0 ? part : dx[i] + part;
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

at::Tensor pixel_shift_forward_cuda(const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const auto flat = check_pixel_shift(x_in, shifts_in, "pixel_shift_products: ");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = flat.size() / 2;
  at::Tensor out = at::empty({B, S * C, H, W}, x.options());
  if (out.numel() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products", [&] {
    for (const Shifts& sh : shift_chunks(flat)) {
      launch_kernel<pixel_shift_forward_kernel<scalar_t>>(blocks_for(B * sh.count * C * H * W), kThreads, 0, stream)(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B, C, H, W, S, sh);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

at::Tensor pixel_shift_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef shifts_in) {
  const auto flat = check_pixel_shift(x_in, shifts_in, "pixel_shift_products_backward: ");
  const int64_t S = flat.size() / 2;
  check_pixel_shift_grad(x_in, grad_in, S, "pixel_shift_products_backward: ");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor dx = at::empty(x.sizes(), x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (dx.numel() == 0) return dx.to(x.scalar_type());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_shift_products_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (const Shifts& sh : shift_chunks(flat)) {
      launch_kernel<pixel_shift_backward_kernel<scalar_t, acc_t>>(blocks_for(dx.numel()), kThreads, 0, stream)(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<acc_t>(), B, C, H, W, S,
          sh);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return dx.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("pixel_shift_products", &pixel_shift_forward_cuda);
  m.impl("pixel_shift_products_backward", &pixel_shift_backward_cuda);
}

}  // namespace translution_ext
