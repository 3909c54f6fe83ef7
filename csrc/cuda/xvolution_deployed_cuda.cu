// The deployed X-volution on CUDA.  The X part is ATen's convolution (cuDNN); the T(X) part is one
// implicit GEMM per chunk of shifts (shift_chunks.cuh): block (pixel tile, Co tile) stages W_T's
// (Co, R) slice and the products X[c, q] * X[c, q + d_s] at its pixels' Ka x Ka tap positions in
// shared memory (block_gemm.cuh), never in global memory, and adds its tile into the output.
// Every output element is written by one thread per launch and the launches run in order on the
// stream: no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "block_gemm.cuh"
#include "launch.cuh"
#include "shift_chunks.cuh"

#include "../pixel_shift_products.h"
#include "../xvolution_deployed.h"

namespace translution_ext::cuda {
namespace {

constexpr const char* kOp = "xvolution_deployed: ";

// The geometry as kernel arguments (by value).
struct Dims {
  int64_t B, C, H, W, Co, Ka, stride, Ho, Wo, R;
};

// y[b, co, oy, ox] += sum over the chunk's rows r of w_t[co, r] * T(X)[b, s*C + c] at the input position
// of tap (ky, kx) of (oy, ox); r = ((s*C + c)*Ka + ky)*Ka + kx.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    xvolution_deployed_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_t,
                              scalar_t* __restrict__ y, Dims g, Shifts sh) {
  using T = TileTraits<scalar_t>;
  using acc_t = typename T::acc_t;
  using operand_t = typename T::operand_t;
  __shared__ __align__(128) unsigned char smem[T::kSmemBytes];
  __shared__ int64_t col_plane[kBN], col_y[kBN], col_x[kBN], col_out[kBN];

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN, m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t hw_out = g.Ho * g.Wo, a = g.Ka / 2;
  for (int n = threadIdx.x; n < kBN; n += kThreads) {
    const int64_t p = n0 + n;
    if (p < g.B * hw_out) {
      const int64_t b = p / hw_out, oy = (p % hw_out) / g.Wo, ox = p % g.Wo;
      col_plane[n] = b * g.C * g.H * g.W;
      col_y[n] = oy * g.stride - a;
      col_x[n] = ox * g.stride - a;
      col_out[n] = b * g.Co * hw_out + oy * g.Wo + ox;
    } else {
      col_out[n] = -1;
    }
  }
  __syncthreads();

  operand_t* As = reinterpret_cast<operand_t*>(smem);
  operand_t* Bs = As + kBM * T::kLdA;
  const int64_t taps = g.Ka * g.Ka, r_begin = sh.first * g.C * taps, r_end = (sh.first + sh.count) * g.C * taps;
  BlockAccumulator<scalar_t> acc;
  acc.zero();
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kBK) {
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int m = e / kBK, k = e % kBK;
      const bool ok = m0 + m < g.Co && r0 + k < r_end;
      As[m * T::kLdA + k] = to_operand<operand_t>(ok ? static_cast<acc_t>(w_t[(m0 + m) * g.R + r0 + k]) : acc_t(0));
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int k = e / kBN, n = e % kBN;
      const int64_t r = r0 + k;
      acc_t v = 0;
      if (r < r_end && col_out[n] >= 0) {
        const int64_t kx = r % g.Ka, ky = (r / g.Ka) % g.Ka, c = (r / taps) % g.C, s = r / (taps * g.C) - sh.first;
        const scalar_t* plane = x + col_plane[n] + c * g.H * g.W;
        const int64_t iy = col_y[n] + ky, ix = col_x[n] + kx;
        v = static_cast<acc_t>(shifted(plane, g.H, g.W, iy, ix, int64_t(0), int64_t(0))) *
            static_cast<acc_t>(shifted(plane, g.H, g.W, iy, ix, sh.d[2 * s], sh.d[2 * s + 1]));
      }
      Bs[k * T::kLdB + n] = to_operand<operand_t>(v);
    }
    __syncthreads();
    acc.step(As, Bs);
    __syncthreads();
  }
  for_each_result<scalar_t>(acc, smem, [&](int m, int n, acc_t v) {
    if (m0 + m < g.Co && col_out[n] >= 0) {
      scalar_t* out = y + col_out[n] + (m0 + m) * hw_out;
      *out = static_cast<scalar_t>(static_cast<acc_t>(*out) + v);
    }
  });
}

at::Tensor xvolution_deployed_cuda(const at::Tensor& x_in, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef shifts, int64_t stride,
                                   int64_t pssa_kernel_size) {
  const auto g = check_xvolution_deployed(x_in, weight, bias, shifts, stride, pssa_kernel_size, kOp);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = xvolution_deployed_conv_part(x, weight, bias, g);
  if (y.numel() == 0) return y;
  const at::Tensor w_t = xvolution_deployed_pssa_weight(weight, g);
  const Dims dims{g.B, g.C, g.H, g.W, g.Co, g.Ka, g.stride, g.Ho, g.Wo, g.reduction()};
  const dim3 grid(static_cast<unsigned>((g.B * g.Ho * g.Wo + kBN - 1) / kBN),
                  static_cast<unsigned>((g.Co + kBM - 1) / kBM));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "xvolution_deployed", [&] {
    for (const Shifts& sh : shift_chunks(g.shifts)) {
      launch_kernel<xvolution_deployed_kernel<scalar_t>>(grid, kThreads, 0, stream)(
          x.const_data_ptr<scalar_t>(), w_t.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), dims, sh);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("xvolution_deployed", &xvolution_deployed_cuda);
}

}  // namespace translution_ext::cuda
