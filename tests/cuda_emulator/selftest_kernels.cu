// Deliberately broken kernels (and one correct one) that the emulator must report:
// torch.ops.cuda_emulator.selftest(name, x) runs kernel `name` on x (float32, 64 elements).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include "cuda/launch.cuh"

namespace {

constexpr int kN = 64;

// Correct: every thread writes its slot, a barrier, then reads its neighbour's.
__global__ void rotate_kernel(const float* x, float* out) {
  __shared__ float s[kN];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  out[t] = s[(t + 1) % kN];
}

// The same without the barrier: the neighbour's slot may not be written yet.
__global__ void missing_barrier_kernel(const float* x, float* out) {
  __shared__ float s[kN];
  const int t = threadIdx.x;
  s[t] = x[t];
  out[t] = s[(t + 1) % kN];
}

// Thread 63 reads one element past the array.
__global__ void shared_out_of_bounds_kernel(const float* x, float* out) {
  __shared__ float s[kN];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  out[t] = s[t + 1];
}

// Threads past n leave before the barrier the others wait at.
__global__ void early_return_kernel(const float* x, float* out, int n) {
  __shared__ float s[kN];
  const int t = threadIdx.x;
  if (t >= n) return;
  s[t] = x[t];
  __syncthreads();
  out[t] = s[(t + 1) % n];
}

// Even and odd threads wait at different barriers.
__global__ void divergent_barrier_kernel(const float* x, float* out) {
  const int t = threadIdx.x;
  if (t % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = x[t];
}

// A WMMA load from a pointer that is not 256-bit aligned.
__global__ void misaligned_wmma_kernel(const float* x, float* out) {
  __shared__ __align__(32) __half a[16 * 16 + 8];
  for (int e = threadIdx.x; e < 16 * 16 + 8; e += blockDim.x) a[e] = __float2half_rn(x[e % kN]);
  __syncthreads();
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> f;
  nvcuda::wmma::load_matrix_sync(f, a + 1, 16);
  out[threadIdx.x] = __half2float(f.x[0]);
}

__global__ void copy_kernel(const float* x, float* out) { out[threadIdx.x] = x[threadIdx.x]; }

// Correct with dynamic shared memory: a rotation through the end of a 64 KB block (which
// needs the opt-in above 48 KB first).
constexpr int kDynamicBytes = 64 * 1024;
__global__ void dynamic_rotate_kernel(const float* x, float* out) {
  extern __shared__ __align__(16) float dynamic[];
  float* s = dynamic + kDynamicBytes / sizeof(float) - kN;
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  out[t] = s[(t + 1) % kN];
}

// Reads dynamic shared memory that no thread wrote: NaN, as the emulator poisons it.
__global__ void dynamic_unwritten_kernel(const float* x, float* out) {
  extern __shared__ __align__(16) float dynamic[];
  const int t = threadIdx.x;
  dynamic[t] = x[t];
  __syncthreads();
  out[t] = dynamic[kN + t];
}

at::Tensor selftest(c10::string_view name, const at::Tensor& x_in) {
  TORCH_CHECK(x_in.numel() == kN && x_in.scalar_type() == at::kFloat, "selftest: x must be 64 float32 values");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::zeros_like(x);
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (name == "rotate") {
    translution_ext::launch_kernel<rotate_kernel>(1, kN, 0, stream)(xp, op);
  } else if (name == "missing_barrier") {
    translution_ext::launch_kernel<missing_barrier_kernel>(1, kN, 0, stream)(xp, op);
  } else if (name == "shared_out_of_bounds") {
    translution_ext::launch_kernel<shared_out_of_bounds_kernel>(1, kN, 0, stream)(xp, op);
  } else if (name == "early_return") {
    translution_ext::launch_kernel<early_return_kernel>(1, kN, 0, stream)(xp, op, kN - 7);
  } else if (name == "divergent_barrier") {
    translution_ext::launch_kernel<divergent_barrier_kernel>(1, kN, 0, stream)(xp, op);
  } else if (name == "misaligned_wmma") {
    translution_ext::launch_kernel<misaligned_wmma_kernel>(1, 32, 0, stream)(xp, op);
  } else if (name == "grid_too_large") {
    translution_ext::launch_kernel<copy_kernel>(dim3(1, 70000), kN, 0, stream)(xp, op);
  } else if (name == "block_too_large") {
    translution_ext::launch_kernel<copy_kernel>(1, 2048, 0, stream)(xp, op);
  } else if (name == "dynamic_rotate") {
    cudaFuncSetAttribute(dynamic_rotate_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDynamicBytes);
    translution_ext::launch_kernel<dynamic_rotate_kernel>(1, kN, kDynamicBytes, stream)(xp, op);
  } else if (name == "dynamic_without_opt_in") {
    translution_ext::launch_kernel<dynamic_unwritten_kernel>(1, kN, kDynamicBytes, stream)(xp, op);
  } else if (name == "dynamic_unwritten") {
    translution_ext::launch_kernel<dynamic_unwritten_kernel>(1, kN, 2 * kN * sizeof(float), stream)(xp, op);
  } else if (name == "empty_grid") {
    translution_ext::launch_kernel<copy_kernel>(0, kN, 0, stream)(xp, op);
  } else {
    TORCH_CHECK_VALUE(false, "selftest: unknown kernel '", std::string(name), "'");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cuda_emulator, m) { m.def("selftest(str name, Tensor x) -> Tensor", &selftest); }
