// Fused Translution attention on CUDA: the ATen-composed implementation
// (translution_attention_aten.cpp) registered for the CUDA dispatch key; its GEMMs run in
// cuBLAS on the current stream.  Compiled only in CUDA builds, so a CPU build reports no
// CUDA kernel for the op.
#include "launch.cuh"
#include <torch/library.h>

#include "../translution_attention.h"

namespace translution_ext {

namespace {

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(
    const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
    const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt, const std::optional<at::Tensor>& vt,
    const at::Tensor& key_index, const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  return attention_forward_aten(q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, heads, scale, causal);
}

AttentionGrads attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks,
    const std::optional<at::Tensor>& vs, const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
    const std::optional<at::Tensor>& vt, const at::Tensor& key_index, const at::Tensor& query_index,
    const at::Tensor& out, const at::Tensor& lse, int64_t heads, double scale, bool causal) {
  return attention_backward_aten(grad_out, q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, out, lse, heads,
                                 scale, causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("translution_attention", &attention_forward_cuda);
  m.impl("translution_attention_backward", &attention_backward_cuda);
}

}  // namespace translution_ext
