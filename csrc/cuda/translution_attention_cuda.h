// Host side of the fused Translution attention kernels: their arguments and launches.
//   forward   translution_attention_forward_cuda.cu   1 launch
//   backward  translution_attention_backward_cuda.cu  3 launches (4 for fp16/bf16: a final cast)
// Registered for the CUDA dispatch key in translution_attention_cuda.cu.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "../translution_attention.h"
#include "translution_attention_tiles.cuh"

namespace translution_ext::cuda {

// Dynamic shared memory per block of each kernel, for q/k width `width` and v width
// `value_width` per head (the kernels refuse widths whose blocks exceed the device's limit).
int64_t attention_forward_smem_bytes(at::ScalarType dtype, int64_t width, int64_t value_width);
int64_t attention_backward_smem_bytes(at::ScalarType dtype, int64_t width, int64_t value_width);

void attention_forward_launch(const AttentionInputs& in, const AttentionPlan& plan, at::Tensor& out,
                              at::Tensor& lse);

// grads: q, k, v, the three sources, the three tables (undefined for absent inputs), allocated
// by the caller in the input dtype.
void attention_backward_launch(const AttentionInputs& in, const AttentionPlan& plan, const at::Tensor& grad_out,
                               const at::Tensor& out, const at::Tensor& lse, std::array<at::Tensor, 9>& grads);

template <typename scalar_t>
AttentionArgs<scalar_t> make_attention_args(const AttentionInputs& in, const AttentionPlan& plan) {
  AttentionArgs<scalar_t> a{};
  for (int r = 0; r < 3; ++r) {
    Role<scalar_t>& role = a.role[r];
    role.shared = in.shared[r] ? in.shared[r]->data_ptr<scalar_t>() : nullptr;
    role.source = in.source[r] ? in.source[r]->data_ptr<scalar_t>() : nullptr;
    role.table = in.table[r] ? in.table[r]->data_ptr<scalar_t>() : nullptr;
    role.ds = plan.shared_dim[r];
    role.dr = plan.relative_dim[r];
    role.C = plan.source_dim[r];
  }
  a.plan = plan.groups->kernel_plan.data_ptr<int32_t>();
  a.layout = plan.groups->layout;
  a.B = plan.B;
  a.N = plan.N;
  a.H = plan.H;
  a.scale = static_cast<at::opmath_type<scalar_t>>(in.scale);
  return a;
}

// The grids: (query or key tiles, batch tiles of kBatchTile, heads) and (pair groups, heads).
inline void check_grid_limits(const AttentionPlan& plan) {
  TORCH_CHECK_VALUE((plan.B + kBatchTile - 1) / kBatchTile <= 65535 && plan.H <= 65535,
                    "translution_attention: the CUDA kernels take batches up to ", 65535 * kBatchTile,
                    " and up to 65535 heads, got B = ", plan.B, " and heads = ", plan.H);
}

// Lets `kernel` use `bytes` of dynamic shared memory, or refuses (ValueError) when the device
// has less per block.
template <typename Kernel>
void allow_shared_memory(Kernel* kernel, int64_t bytes, const char* what) {
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(bytes <= limit, "translution_attention: the CUDA kernel ", what, " needs ", bytes,
                    " bytes of shared memory per block for these head widths, over the device's ", limit,
                    "; use narrower heads, or backend='native' in the Translution blocks");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace translution_ext::cuda
