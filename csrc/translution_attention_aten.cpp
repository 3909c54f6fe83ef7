// Fused Translution attention on CPU, composed of ATen operations: the work items run in
// parallel on the thread pool (BLAS GEMMs inside).  Registered in
// cpu/translution_attention_cpu.cpp; CUDA has its own kernels (cuda/translution_attention_*).
//
// Forward, per block of query rows (one work item each): for every pair group
// (one q class, one k/v class) the block's pairs gather their token rows and project
// them with one table row each — dense (B*P, C) x (C, D) GEMMs — into scores kept for
// the block only, (B, H, rows, N); softmax and the log-sum-exp per row; then the
// values are projected the same way and summed into the block's output rows.
// Backward, per pair group (each on one thread, so each table row's gradient has one
// writer): q, k, v and the softmax weights are recomputed from the saved log-sum-exp
// (the FlashAttention scheme), the per-pair gradients feed one GEMM per table row,
// and the token gradients go to per-thread buffers summed in thread order.
// Nothing of size N x N x (C or D) is stored; the per-block scores are O(B·H·rows·N).
// Deterministic: every output element has one writer, the thread buffers are summed in order.
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <limits>

#include "parallel.h"
#include "translution_attention.h"

namespace translution_ext {

namespace {

// Multiply-adds of one pair and batch item in the forward: each role's projection and the
// scores / weighted sum (the backward does about three times as many).
int64_t pair_work(const AttentionPlan& plan) {
  int64_t work = 0;
  for (int r = 0; r < 3; ++r) work += plan.H * (plan.source_dim[r] * plan.relative_dim[r] + plan.head_dim(r));
  return work;
}

// Forward work items: blocks of query rows [starts[b], starts[b + 1]) with about equal pair counts
// (a causal row i has i + 1 pairs), as many as a multiple of the threads, of about 128 rows at
// most: equal row counts left one thread waiting (50 tokens on 2 threads: 32 + 18 rows).  Rows
// are computed independently, so the result does not depend on the blocks.
std::vector<int64_t> row_blocks(const PairGroups& groups, int64_t N, int64_t threads) {
  std::vector<int64_t> pairs_before(N + 1, 0);  // pairs of the rows < r
  for (const int64_t i : groups.pair_i) ++pairs_before[i + 1];
  for (int64_t r = 0; r < N; ++r) pairs_before[r + 1] += pairs_before[r];
  const int64_t wanted = (N + 127) / 128, blocks = std::min(N, (wanted + threads - 1) / threads * threads);
  std::vector<int64_t> starts{0};
  for (int64_t b = 1; b < blocks; ++b) {
    const int64_t target = pairs_before[N] * b / blocks;
    const int64_t r = std::lower_bound(pairs_before.begin(), pairs_before.end(), target) - pairs_before.begin();
    if (r > starts.back() && r < N) starts.push_back(r);
  }
  starts.push_back(N);
  return starts;
}

// Backward work: the pair groups of each thread, the largest first to the least loaded thread
// (a fixed assignment for a given thread count, so the thread buffers sum in a fixed order), each
// list in group order.  Contiguous ranges of groups left one thread with most of the pairs.
std::vector<std::vector<int64_t>> group_lists(const PairGroups& groups, int64_t threads) {
  const int64_t G = groups.num_groups();
  std::vector<int64_t> order(G);
  for (int64_t g = 0; g < G; ++g) order[g] = g;
  auto size = [&](int64_t g) { return groups.group_begin[g + 1] - groups.group_begin[g]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return size(a) > size(b); });
  std::vector<std::vector<int64_t>> lists(std::min(threads, std::max<int64_t>(G, 1)));
  std::vector<int64_t> load(lists.size(), 0);
  for (const int64_t g : order) {
    const size_t t = std::min_element(load.begin(), load.end()) - load.begin();
    lists[t].push_back(g);
    load[t] += size(g);
  }
  for (auto& list : lists) std::sort(list.begin(), list.end());
  return lists;
}
using at::indexing::Slice;

struct Operands {
  std::array<at::Tensor, 3> shared, source, table;  // opmath, contiguous; undefined when absent
};

Operands to_opmath(const AttentionInputs& in, at::ScalarType op) {
  Operands o;
  auto conv = [op](const std::optional<at::Tensor>& t) { return t ? t->to(op).contiguous() : at::Tensor(); };
  for (int r = 0; r < 3; ++r) {
    o.shared[r] = conv(in.shared[r]);
    o.table[r] = conv(in.table[r]);
    // Translution passes the same x as every role's source: convert it once.
    for (int earlier = 0; earlier < r && !o.source[r].defined(); ++earlier)
      if (in.source[r] && in.source[earlier] && in.source[r]->is_same(*in.source[earlier]))
        o.source[r] = o.source[earlier];
    if (!o.source[r].defined()) o.source[r] = conv(in.source[r]);
  }
  return o;
}


// The role's per-head vectors for the pairs reading token rows `rows` of group g:
// (B, P, H, ds + dr), the shared part first.
at::Tensor role_rows(const Operands& o, const AttentionPlan& plan, int role, int64_t g, const at::Tensor& rows) {
  const int64_t B = plan.B, P = rows.numel(), H = plan.H;
  std::vector<at::Tensor> parts;
  if (o.shared[role].defined())
    parts.push_back(o.shared[role].index_select(1, rows).view({B, P, H, plan.shared_dim[role]}));
  if (o.table[role].defined()) {
    const at::Tensor w = o.table[role].select(0, plan.groups->group_class[role][g]);
    const at::Tensor src = o.source[role].index_select(1, rows).reshape({B * P, plan.source_dim[role]});
    parts.push_back(at::mm(src, w).view({B, P, H, plan.relative_dim[role]}));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, -1);
}

AttentionInputs make_inputs(const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                            const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs,
                            const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
                            const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
                            const std::optional<at::Tensor>& vt, const at::Tensor& key_index,
                            const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  return AttentionInputs{{q, k, v}, {qs, ks, vs}, {qt, kt, vt}, key_index, query_index, heads, scale, causal};
}

at::ScalarType input_dtype(const AttentionInputs& in) {
  for (int r = 0; r < 3; ++r) {
    if (in.shared[r]) return in.shared[r]->scalar_type();
    if (in.source[r]) return in.source[r]->scalar_type();
  }
  return at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_forward_aten(
    const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
    const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt, const std::optional<at::Tensor>& vt,
    const at::Tensor& key_index, const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  // The kernel computes in its own precision: autocast must not recast its inner products.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in = make_inputs(q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);  // checks devices first
  const c10::OptionalDeviceGuard device_guard(in.key_index.device());
  const auto dtype = input_dtype(in);
  const Operands o = to_opmath(in, attention_opmath(dtype));
  const auto opts = at::TensorOptions().dtype(attention_opmath(dtype)).device(key_index.device());
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV), G = plan.num_groups();
  at::Tensor out = at::empty({B, N, H * dv}, opts);
  at::Tensor lse = at::empty({B, H, N}, opts);
  if (B == 0 || N == 0) return {out.to(dtype), lse};
  const std::vector<int64_t> starts = row_blocks(*plan.groups, N, std::max(1, at::get_num_threads()));
  const int64_t blocks = static_cast<int64_t>(starts.size()) - 1;
  const at::Tensor& pair_i = plan.groups->pair_i_on_device;
  const at::Tensor& pair_j = plan.groups->pair_j_on_device;
  const int64_t pairs = static_cast<int64_t>(plan.groups->pair_i.size());
  parallel_for_items(0, blocks, B * pairs / blocks * pair_work(plan), [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t i0 = starts[blk], i1 = starts[blk + 1], rows = i1 - i0;
      // The block's pairs in every group: pair_i is sorted within a group.
      std::vector<std::array<int64_t, 3>> segments;  // group, begin, end
      for (int64_t g = 0; g < G; ++g) {
        const auto gb = plan.groups->pair_i.begin() + plan.groups->group_begin[g];
        const auto ge = plan.groups->pair_i.begin() + plan.groups->group_begin[g + 1];
        const int64_t b = std::lower_bound(gb, ge, i0) - plan.groups->pair_i.begin();
        const int64_t e = std::lower_bound(gb, ge, i1) - plan.groups->pair_i.begin();
        if (b < e) segments.push_back({g, b, e});
      }
      at::Tensor scores = at::full({B, H, rows, N}, -std::numeric_limits<double>::infinity(), opts);
      std::vector<std::array<at::Tensor, 2>> idx;  // (rows of the block, key tokens) per segment
      for (const auto& [g, b, e] : segments) {
        at::Tensor I = pair_i.slice(0, b, e), J = pair_j.slice(0, b, e);
        at::Tensor s = (role_rows(o, plan, kQ, g, I) * role_rows(o, plan, kK, g, J)).sum(-1);  // (B, P, H)
        at::Tensor local = I - i0;
        scores.index_put_({Slice(), Slice(), local, J}, s.mul_(in.scale).permute({0, 2, 1}));
        idx.push_back({local, J});
      }
      at::Tensor block_lse = at::logsumexp(scores, -1);  // (B, H, rows)
      at::Tensor weights = (scores - block_lse.unsqueeze(-1)).exp_();
      at::Tensor block_out = at::zeros({B, rows, H * dv}, opts);
      for (size_t s = 0; s < segments.size(); ++s) {
        const auto& [local, J] = idx[s];
        at::Tensor a = weights.index({Slice(), Slice(), local, J}).permute({0, 2, 1});  // (B, P, H)
        at::Tensor vv = role_rows(o, plan, kV, segments[s][0], J);                    // (B, P, H, dv)
        block_out.index_add_(1, local, (a.unsqueeze(-1) * vv).reshape({B, -1, H * dv}));
      }
      out.narrow(1, i0, rows).copy_(block_out);
      lse.narrow(2, i0, rows).copy_(block_lse);
    }
  });
  return {out.to(dtype), lse};
}

AttentionGrads attention_backward_aten(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs, const std::optional<at::Tensor>& ks,
    const std::optional<at::Tensor>& vs, const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
    const std::optional<at::Tensor>& vt, const at::Tensor& key_index, const at::Tensor& query_index,
    const at::Tensor& out, const at::Tensor& lse, int64_t heads, double scale, bool causal) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const AttentionInputs in = make_inputs(q, k, v, qs, ks, vs, qt, kt, vt, key_index, query_index, heads, scale, causal);
  const AttentionPlan plan = prepare_attention(in);  // checks devices first
  const c10::OptionalDeviceGuard device_guard(in.key_index.device());
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV), G = plan.num_groups();
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, N, H * dv}) && out.sizes() == grad_out.sizes(),
                    "translution_attention_backward: grad_out and out must have shape (B, N, H*dv) == (", B,
                    ", ", N, ", ", H * dv, ")");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({B, H, N}),
                    "translution_attention_backward: lse must have shape (B, H, N) == (", B, ", ", H, ", ", N,
                    "), got ", lse.sizes());
  const auto dtype = input_dtype(in);
  const Operands o = to_opmath(in, attention_opmath(dtype));
  const auto opts = at::TensorOptions().dtype(attention_opmath(dtype)).device(key_index.device());
  const at::Tensor dO = grad_out.to(opts.dtype()).contiguous();
  const at::Tensor L = lse.to(opts.dtype()).contiguous();
  // D_i = <dO_i, O_i> per head: the softmax backward's row term, (B, H, N).
  const at::Tensor Drow =
      (dO * out.to(opts.dtype())).view({B, N, H, dv}).sum(-1).permute({0, 2, 1}).contiguous();

  // Each table row belongs to one pair group at most (prepare_attention checks it), which
  // writes its gradient whole: only the rows of no group are zeroed, not the whole table.
  std::array<at::Tensor, 3> grad_table;
  for (int r = 0; r < 3; ++r) {
    if (!o.table[r].defined()) continue;
    grad_table[r] = at::empty_like(o.table[r]);
    std::vector<char> owned(o.table[r].size(0), 0);
    for (int64_t g = 0; g < G; ++g) owned[plan.groups->group_class[r][g]] = 1;
    for (int64_t cls = 0; cls < static_cast<int64_t>(owned.size()); ++cls)
      if (!owned[cls]) grad_table[r].select(0, cls).zero_();
  }
  // Per-thread token gradients: slots 0..2 the shared parts, 3..5 the sources.
  const std::vector<std::vector<int64_t>> lists = group_lists(*plan.groups, std::max(1, at::get_num_threads()));
  std::vector<std::array<at::Tensor, 6>> local(lists.size());
  const at::Tensor& pair_i = plan.groups->pair_i_on_device;
  const at::Tensor& pair_j = plan.groups->pair_j_on_device;

  const int64_t pairs = static_cast<int64_t>(plan.groups->pair_i.size()), slots = static_cast<int64_t>(lists.size());
  parallel_for_items(0, slots, 3 * B * pairs / slots * pair_work(plan), [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      auto& mine = local[t];
      for (int r = 0; r < 3; ++r) {
        if (o.shared[r].defined() && !mine[r].defined()) mine[r] = at::zeros_like(o.shared[r]);
        if (o.source[r].defined() && !mine[3 + r].defined()) mine[3 + r] = at::zeros_like(o.source[r]);
      }
      for (const int64_t g : lists[t]) {
        const int64_t b = plan.groups->group_begin[g], e = plan.groups->group_begin[g + 1], P = e - b;
        at::Tensor I = pair_i.slice(0, b, e), J = pair_j.slice(0, b, e);
        at::Tensor qq = role_rows(o, plan, kQ, g, I), kk = role_rows(o, plan, kK, g, J);
        at::Tensor vv = role_rows(o, plan, kV, g, J);
        at::Tensor s = (qq * kk).sum(-1).mul_(in.scale);                                     // (B, P, H)
        at::Tensor a = (s - L.index_select(2, I).permute({0, 2, 1})).exp_();                 // (B, P, H)
        at::Tensor dOi = dO.index_select(1, I).view({B, P, H, dv});
        at::Tensor ds = a * ((dOi * vv).sum(-1) - Drow.index_select(2, I).permute({0, 2, 1}));
        ds.mul_(in.scale);
        const std::array<at::Tensor, 3> grads = {ds.unsqueeze(-1) * kk, ds.unsqueeze(-1) * qq,
                                                 a.unsqueeze(-1) * dOi};  // (B, P, H, width)
        for (int r = 0; r < 3; ++r) {
          const at::Tensor& rows = r == kQ ? I : J;
          const int64_t ds_r = plan.shared_dim[r], dr_r = plan.relative_dim[r];
          if (o.shared[r].defined())
            mine[r].index_add_(1, rows, grads[r].narrow(-1, 0, ds_r).reshape({B, P, H * ds_r}));
          if (!o.table[r].defined()) continue;
          const int64_t cls = plan.groups->group_class[r][g];
          const at::Tensor flat = grads[r].narrow(-1, ds_r, dr_r).reshape({B * P, H * dr_r});
          const at::Tensor src = o.source[r].index_select(1, rows).reshape({B * P, plan.source_dim[r]});
          at::Tensor row = grad_table[r].select(0, cls);  // this group owns row cls
          at::mm_out(row, src.t(), flat);
          const at::Tensor grad_source = at::mm(flat, o.table[r].select(0, cls).t());
          mine[3 + r].index_add_(1, rows, grad_source.view({B, P, plan.source_dim[r]}));
        }
      }
    }
  });

  const at::Tensor none = at::empty({0}, opts.dtype(dtype));
  auto sum_threads = [&](int slot, const at::Tensor& like) {
    if (!like.defined()) return none;
    at::Tensor total = at::zeros_like(like);
    for (auto& t : local)
      if (t[slot].defined()) total.add_(t[slot]);
    return total.to(dtype);
  };
  auto cast = [&](const at::Tensor& t) { return t.defined() ? t.to(dtype) : none; };
  return {sum_threads(0, o.shared[0]), sum_threads(1, o.shared[1]), sum_threads(2, o.shared[2]),
          sum_threads(3, o.source[0]), sum_threads(4, o.source[1]), sum_threads(5, o.source[2]),
          cast(grad_table[0]), cast(grad_table[1]), cast(grad_table[2])};
}

}  // namespace translution_ext
