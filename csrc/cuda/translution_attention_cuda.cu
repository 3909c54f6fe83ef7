// Fused Translution attention on CUDA: the hand-written kernels (forward: one launch,
// backward: three, four for fp16/bf16), registered for the CUDA dispatch key.  The pair plan
// of an index-map pair is built on its first use and cached on the device
// (translution_attention.cpp), so a call makes no host-device copy of it.
#include "translution_attention_cuda.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.cuh"

namespace translution_ext {

namespace {

using cuda::attention_backward_launch;
using cuda::attention_forward_launch;

// The inputs with every tensor contiguous (the index maps stay as given: they key the plan cache).
AttentionInputs contiguous_inputs(const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                                  const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs,
                                  const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
                                  const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
                                  const std::optional<at::Tensor>& vt, const at::Tensor& key_index,
                                  const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  auto c = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  return AttentionInputs{{c(q), c(k), c(v)}, {c(qs), c(ks), c(vs)}, {c(qt), c(kt), c(vt)}, key_index, query_index,
                         heads, scale, causal};
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(
    const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
    const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt, const std::optional<at::Tensor>& vt,
    const at::Tensor& key_index, const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in =
      contiguous_inputs(q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);  // checks everything first
  const c10::cuda::OptionalCUDAGuard guard(key_index.device());
  const at::Tensor& ref = reference_tensor(in);
  at::Tensor out = at::empty({plan.B, plan.N, plan.H * plan.head_dim(kV)}, ref.options());
  at::Tensor lse = at::empty({plan.B, plan.H, plan.N}, ref.options().dtype(attention_opmath(ref.scalar_type())));
  if (plan.B == 0 || plan.N == 0) return {out, lse};
  attention_forward_launch(in, plan, out, lse);
  return {out, lse};
}

AttentionGrads attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks,
    const std::optional<at::Tensor>& vs, const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
    const std::optional<at::Tensor>& vt, const at::Tensor& key_index, const at::Tensor& query_index,
    const at::Tensor& out, const at::Tensor& lse, int64_t heads, double scale, bool causal) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in =
      contiguous_inputs(q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);
  const c10::cuda::OptionalCUDAGuard guard(key_index.device());
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, N, H * dv}) && out.sizes() == grad_out.sizes(),
                    "translution_attention_backward: grad_out and out must have shape (B, N, H*dv) == (", B, ", ",
                    N, ", ", H * dv, ")");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({B, H, N}),
                    "translution_attention_backward: lse must have shape (B, H, N) == (", B, ", ", H, ", ", N,
                    "), got ", lse.sizes());
  const at::Tensor& ref = reference_tensor(in);
  TORCH_CHECK_TYPE(grad_out.scalar_type() == ref.scalar_type() && out.scalar_type() == ref.scalar_type(),
                   "translution_attention_backward: grad_out and out must have the inputs' dtype (",
                   ref.scalar_type(), "), got ", grad_out.scalar_type(), " and ", out.scalar_type());
  TORCH_CHECK_TYPE(lse.scalar_type() == attention_opmath(ref.scalar_type()),
                   "translution_attention_backward: lse must have dtype ", attention_opmath(ref.scalar_type()),
                   ", got ", lse.scalar_type());
  std::array<at::Tensor, 9> grads;
  const std::array<const std::optional<at::Tensor>*, 9> inputs = {&in.shared[0], &in.shared[1], &in.shared[2],
                                                                  &in.source[0], &in.source[1], &in.source[2],
                                                                  &in.table[0],  &in.table[1],  &in.table[2]};
  for (int t = 0; t < 9; ++t)
    if (*inputs[t]) grads[t] = at::empty_like(**inputs[t]);
  if (B > 0 && N > 0) {
    attention_backward_launch(in, plan, grad_out, out, lse, grads);
  } else {
    for (int t = 6; t < 9; ++t)  // no pairs: the tables get no gradient
      if (grads[t].defined()) grads[t].zero_();
  }
  const at::Tensor none = at::empty({0}, ref.options());
  auto or_none = [&](const at::Tensor& t) { return t.defined() ? t : none; };
  return {or_none(grads[0]), or_none(grads[1]), or_none(grads[2]), or_none(grads[3]), or_none(grads[4]),
          or_none(grads[5]), or_none(grads[6]), or_none(grads[7]), or_none(grads[8])};
}

// Dynamic shared memory per block of the forward and backward kernels: the backend rule compares
// it with the device's limit (translution_ext/nn/functional.py).
std::vector<int64_t> attention_shared_memory(at::ScalarType dtype, int64_t width, int64_t value_width) {
  TORCH_CHECK_VALUE(width >= 0 && value_width >= 0, "translution_attention_shared_memory: widths must be >= 0, got ",
                    width, " and ", value_width);
  return {cuda::attention_forward_smem_bytes(dtype, width, value_width),
          cuda::attention_backward_smem_bytes(dtype, width, value_width)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def("translution_attention_shared_memory(ScalarType dtype, int width, int value_width) -> int[]",
        &attention_shared_memory);
}

TORCH_LIBRARY_IMPL(translution_ext, TRANSLUTION_EXT_CUDA_KEY, m) {
  m.impl("translution_attention", &attention_forward_cuda);
  m.impl("translution_attention_backward", &attention_backward_cuda);
}

}  // namespace translution_ext
