// Fused Translution attention on CPU.
//
// Forward, per block of query rows (one work item each): for every pair group
// (one q class, one k/v class) the block's pairs gather their token rows and project
// them with one table row each — dense (B*P, C) x (C, D) GEMMs — into scores kept for
// the block only, (B, H, rows, N); softmax and the log-sum-exp per row; then the
// values are projected the same way and summed into the block's output rows.
// Backward, per pair group (one work item each, so each table row's gradient has one
// writer): q, k, v and the softmax weights are recomputed from the saved log-sum-exp
// (the FlashAttention scheme), the per-pair gradients feed one GEMM per table row,
// and the token gradients go to per-thread buffers summed in thread order.
// Nothing of size N x N x (C or D) is stored; the per-block scores are O(B·H·rows·N).
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../translution_attention.h"

namespace translution_ext {

namespace {

// Query rows per forward work item: large blocks make large GEMMs, but every thread
// needs a block.  Rows are computed independently, so the result does not depend on it.
int64_t rows_per_block(int64_t n) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t even = (n + threads - 1) / threads;
  return std::clamp<int64_t>((even + 15) / 16 * 16, 16, 128);
}
using at::indexing::Slice;

struct Operands {
  at::Tensor x;                      // (B, N, C) in opmath
  std::array<at::Tensor, 3> table;   // (R, C, D) or undefined
  std::array<at::Tensor, 3> shared;  // (B, N, D) or undefined
};

Operands to_opmath(const AttentionInputs& in) {
  const auto op = attention_opmath(in.x.scalar_type());
  Operands o;
  o.x = in.x.to(op).contiguous();
  for (int r = 0; r < 3; ++r) {
    if (in.table[r]) o.table[r] = in.table[r]->to(op).contiguous();
    if (in.shared[r]) o.shared[r] = in.shared[r]->to(op).contiguous();
  }
  return o;
}

at::Tensor index_tensor(const std::vector<int64_t>& v, int64_t begin, int64_t end) {
  return at::from_blob(const_cast<int64_t*>(v.data()) + begin, {end - begin}, at::kLong).clone();
}

// The role's vectors for the pairs reading token rows `rows` of group g: (B, P, D).
at::Tensor role_rows(const Operands& o, const AttentionPlan& plan, int role, int64_t g,
                     const at::Tensor& rows) {
  const int64_t P = rows.numel();
  if (!o.table[role].defined()) return o.shared[role].index_select(1, rows);
  const at::Tensor w = o.table[role].select(0, plan.group_class[role][g]);
  return at::mm(o.x.index_select(1, rows).reshape({plan.B * P, plan.C}), w).view({plan.B, P, plan.D});
}

// Per-head dot products of (B, P, D) tensors: (B, P, H).
at::Tensor head_dot(const at::Tensor& a, const at::Tensor& b, const AttentionPlan& plan) {
  return (a * b).reshape({plan.B, a.size(1), plan.H, plan.D / plan.H}).sum(-1);
}

AttentionInputs make_inputs(const at::Tensor& x, const std::optional<at::Tensor>& qt,
                            const std::optional<at::Tensor>& kt, const std::optional<at::Tensor>& vt,
                            const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                            const std::optional<at::Tensor>& v, const at::Tensor& key_index,
                            const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  return AttentionInputs{x, {qt, kt, vt}, {q, k, v}, key_index, query_index, heads, scale, causal};
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
    const std::optional<at::Tensor>& vt, const std::optional<at::Tensor>& q,
    const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& v, const at::Tensor& key_index,
    const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  // The kernel computes in its own precision: autocast must not recast its inner products.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in = make_inputs(x, qt, kt, vt, q, k, v, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);
  const Operands o = to_opmath(in);
  const auto opts = o.x.options();
  const int64_t B = plan.B, N = plan.N, H = plan.H, D = plan.D, G = plan.num_groups();
  at::Tensor out = at::empty({B, N, D}, opts);
  at::Tensor lse = at::empty({B, H, N}, opts);
  if (B == 0 || N == 0) return {out.to(x.scalar_type()), lse};
  const int64_t kRows = rows_per_block(N);
  const int64_t blocks = (N + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t i0 = blk * kRows, i1 = std::min(N, i0 + kRows), rows = i1 - i0;
      // The block's pairs in every group: pair_i is sorted within a group.
      std::vector<std::array<int64_t, 3>> segments;  // group, begin, end
      for (int64_t g = 0; g < G; ++g) {
        const auto gb = plan.pair_i.begin() + plan.group_begin[g];
        const auto ge = plan.pair_i.begin() + plan.group_begin[g + 1];
        const int64_t b = std::lower_bound(gb, ge, i0) - plan.pair_i.begin();
        const int64_t e = std::lower_bound(gb, ge, i1) - plan.pair_i.begin();
        if (b < e) segments.push_back({g, b, e});
      }
      at::Tensor scores = at::full({B, H, rows, N}, -std::numeric_limits<double>::infinity(), opts);
      std::vector<std::array<at::Tensor, 2>> idx;  // (rows of the block, key tokens) per segment
      for (const auto& [g, b, e] : segments) {
        at::Tensor I = index_tensor(plan.pair_i, b, e), J = index_tensor(plan.pair_j, b, e);
        at::Tensor s = head_dot(role_rows(o, plan, kQ, g, I), role_rows(o, plan, kK, g, J), plan);
        at::Tensor local = I - i0;
        scores.index_put_({Slice(), Slice(), local, J}, s.mul_(in.scale).permute({0, 2, 1}));
        idx.push_back({local, J});
      }
      at::Tensor block_lse = at::logsumexp(scores, -1);  // (B, H, rows)
      at::Tensor weights = (scores - block_lse.unsqueeze(-1)).exp_();
      at::Tensor block_out = at::zeros({B, rows, D}, opts);
      for (size_t s = 0; s < segments.size(); ++s) {
        const auto& [local, J] = idx[s];
        at::Tensor a = weights.index({Slice(), Slice(), local, J}).permute({0, 2, 1});  // (B, P, H)
        at::Tensor vv = role_rows(o, plan, kV, segments[s][0], J);
        at::Tensor contrib = (a.unsqueeze(-1) * vv.reshape({B, -1, H, D / H})).reshape({B, -1, D});
        block_out.index_add_(1, local, contrib);
      }
      out.narrow(1, i0, rows).copy_(block_out);
      lse.narrow(2, i0, rows).copy_(block_lse);
    }
  });
  return {out.to(x.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& qt,
                       const std::optional<at::Tensor>& kt, const std::optional<at::Tensor>& vt,
                       const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                       const std::optional<at::Tensor>& v, const at::Tensor& key_index,
                       const at::Tensor& query_index, const at::Tensor& out, const at::Tensor& lse,
                       int64_t heads, double scale, bool causal) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in = make_inputs(x, qt, kt, vt, q, k, v, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);
  const int64_t B = plan.B, N = plan.N, C = plan.C, H = plan.H, D = plan.D, G = plan.num_groups();
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, N, D}) && out.sizes() == grad_out.sizes(),
                    "translution_attention_backward: grad_out and out must have shape (B, N, D) == (", B,
                    ", ", N, ", ", D, ")");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({B, H, N}),
                    "translution_attention_backward: lse must have shape (B, H, N) == (", B, ", ", H, ", ",
                    N, "), got ", lse.sizes());
  const Operands o = to_opmath(in);
  const auto opts = o.x.options();
  const at::Tensor dO = grad_out.to(opts.dtype()).contiguous();
  const at::Tensor L = lse.to(opts.dtype()).contiguous();
  // D_i = <dO_i, O_i> per head: the softmax backward's row term.
  const at::Tensor Drow = head_dot(dO, out.to(opts.dtype()), plan).permute({0, 2, 1}).contiguous();

  std::array<at::Tensor, 3> grad_table, grad_shared;
  for (int r = 0; r < 3; ++r)
    if (o.table[r].defined()) grad_table[r] = at::zeros_like(o.table[r]);
  const bool any_relative = plan.relative[kQ] || plan.relative[kK] || plan.relative[kV];
  const int threads = at::get_num_threads();
  // Per-thread token gradients: x (if any role is relative) and the shared roles.
  std::vector<std::array<at::Tensor, 4>> local(threads);

  at::parallel_for(0, G, 1, [&](int64_t first, int64_t last) {
    auto& mine = local[at::get_thread_num()];
    if (any_relative && !mine[3].defined()) mine[3] = at::zeros({B, N, C}, opts);
    for (int r = 0; r < 3; ++r)
      if (!plan.relative[r] && !mine[r].defined()) mine[r] = at::zeros({B, N, D}, opts);
    for (int64_t g = first; g < last; ++g) {
      const int64_t b = plan.group_begin[g], e = plan.group_begin[g + 1], P = e - b;
      at::Tensor I = index_tensor(plan.pair_i, b, e), J = index_tensor(plan.pair_j, b, e);
      at::Tensor qq = role_rows(o, plan, kQ, g, I), kk = role_rows(o, plan, kK, g, J);
      at::Tensor vv = role_rows(o, plan, kV, g, J);
      at::Tensor s = head_dot(qq, kk, plan).mul_(in.scale);                                   // (B, P, H)
      at::Tensor a = (s - L.index_select(2, I).permute({0, 2, 1})).exp_();                    // (B, P, H)
      at::Tensor dOi = dO.index_select(1, I);                                                // (B, P, D)
      auto heads_of = [&](const at::Tensor& t) { return t.reshape({B, P, H, D / H}); };
      at::Tensor dv = (a.unsqueeze(-1) * heads_of(dOi)).reshape({B, P, D});
      at::Tensor ds = a * (head_dot(dOi, vv, plan) - Drow.index_select(2, I).permute({0, 2, 1}));
      ds.mul_(in.scale);
      at::Tensor dq = (ds.unsqueeze(-1) * heads_of(kk)).reshape({B, P, D});
      at::Tensor dk = (ds.unsqueeze(-1) * heads_of(qq)).reshape({B, P, D});
      const std::array<at::Tensor*, 3> grads = {&dq, &dk, &dv};
      for (int r = 0; r < 3; ++r) {
        const at::Tensor& rows = r == kQ ? I : J;
        const at::Tensor flat = grads[r]->reshape({B * P, D});
        if (!plan.relative[r]) {
          mine[r].index_add_(1, rows, *grads[r]);
          continue;
        }
        const int64_t cls = plan.group_class[r][g];
        const at::Tensor xs = o.x.index_select(1, rows).reshape({B * P, C});
        grad_table[r].select(0, cls).addmm_(xs.t(), flat);  // this group owns row cls
        mine[3].index_add_(1, rows, at::mm(flat, o.table[r].select(0, cls).t()).view({B, P, C}));
      }
    }
  });

  auto sum_threads = [&](int slot, at::IntArrayRef shape) {
    at::Tensor total = at::zeros(shape, opts);
    for (auto& t : local)
      if (t[slot].defined()) total.add_(t[slot]);
    return total;
  };
  const auto dtype = x.scalar_type();
  at::Tensor none = at::empty({0}, x.options());
  at::Tensor grad_x = any_relative ? sum_threads(3, {B, N, C}).to(dtype) : at::zeros_like(x);
  std::array<at::Tensor, 3> gt, gs;
  for (int r = 0; r < 3; ++r) {
    gt[r] = plan.relative[r] ? grad_table[r].to(dtype) : none;
    gs[r] = plan.relative[r] ? none : sum_threads(r, {B, N, D}).to(dtype);
  }
  return {grad_x, gt[0], gt[1], gt[2], gs[0], gs[1], gs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("translution_attention", &attention_forward_cpu);
  m.impl("translution_attention_backward", &attention_backward_cpu);
}

}  // namespace translution_ext
