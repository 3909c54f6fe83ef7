// Forward of the fused Translution attention on CPU.  For every pair group (one q class, one k/v
// class) the pairs' q and k give the scores; softmax and the log-sum-exp per row; then the pairs' v,
// weighted, are summed into the output rows.  Two ways to split the work (the result is the same up
// to rounding):
//   forward_by_row_blocks: blocks of at most kBlockRows query rows, the scores of one block,
//     (B, H, rows, N), at a time: the extra memory is O(B·H·N);
//   forward_by_groups: on several threads with no more rows than their blocks would hold at once
//     (N <= kBlockRows x threads), whole pair groups per thread, as in the backward, so that each
//     group is one GEMM of B * P rows (splitting the rows between threads halved them).
// Nothing of size N x N x (C or D) is stored; only the output and the log-sum-exp are saved.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <limits>

#include "../parallel.h"
#include "translution_attention_cpu.h"

namespace translution_ext {

using namespace attention_cpu;

namespace {

constexpr int64_t kBlockRows = 128;  // query rows of a forward block at most: its scores are (B, H, rows, N)

// Forward work items: blocks of query rows [starts[b], starts[b + 1]) with about equal pair counts
// (a causal row i has i + 1 pairs), as many as a multiple of the threads, of about kBlockRows rows at
// most: equal row counts left one thread waiting (50 tokens on 2 threads: 32 + 18 rows).  Rows
// are computed independently, so the result does not depend on the blocks.
std::vector<int64_t> row_blocks(const PairGroups& groups, int64_t N, int64_t threads) {
  std::vector<int64_t> pairs_before(N + 1, 0);  // pairs of the rows < r
  for (const int64_t i : groups.pair_i) ++pairs_before[i + 1];
  for (int64_t r = 0; r < N; ++r) pairs_before[r + 1] += pairs_before[r];
  const int64_t wanted = (N + kBlockRows - 1) / kBlockRows;
  const int64_t blocks = std::min(N, (wanted + threads - 1) / threads * threads);
  std::vector<int64_t> starts{0};
  for (int64_t b = 1; b < blocks; ++b) {
    const int64_t target = pairs_before[N] * b / blocks;
    const int64_t r = std::lower_bound(pairs_before.begin(), pairs_before.end(), target) - pairs_before.begin();
    if (r > starts.back() && r < N) starts.push_back(r);
  }
  starts.push_back(N);
  return starts;
}

// One thread's buffers, sized for its largest range of pairs (rows = B * P).
struct ForwardScratch {
  std::array<at::Tensor, 3> source, vectors;  // per role: gathered source rows (rows, Cr), vectors (rows, H*d)

  ForwardScratch(const Operands& o, const AttentionPlan& plan, int64_t rows, const at::TensorOptions& opts) {
    for (int r = 0; r < 3; ++r) {
      if (o.table[r].defined()) source[r] = at::empty({rows, plan.source_dim[r]}, opts);
      vectors[r] = at::empty({rows, plan.H * plan.head_dim(r)}, opts);
    }
  }

  // Role r's vectors (B * P, H * d) of P pairs of group g whose role-r tokens are `tokens`.
  template <typename T>
  const T* role(const Operands& o, const AttentionPlan& plan, int r, int64_t g, const int64_t* tokens, int64_t P) {
    const int64_t M = plan.B * P;
    at::Tensor x;
    if (o.table[r].defined()) {
      x = source[r].narrow(0, 0, M);
      gather_rows<T>(o.source[r], tokens, plan.B, P, x.mutable_data_ptr<T>());
    }
    role_vectors<T>(o, plan, r, g, tokens, P, x, vectors[r].narrow(0, 0, M));
    return vectors[r].const_data_ptr<T>();
  }
};

// The pairs [first, last) of group g: their scaled scores into scores (B, H, rows, N) at query row
// i - row0.  Each (i, j) is one pair of one group: one writer per element.
template <typename T>
void range_scores(const Operands& o, const AttentionPlan& plan, T scale, int64_t g, int64_t first, int64_t last,
                  int64_t row0, int64_t rows, T* scores, ForwardScratch& scratch) {
  const int64_t B = plan.B, N = plan.N, H = plan.H, d = plan.head_dim(kQ), P = last - first;
  const int64_t* I = plan.groups->pair_i.data() + first;
  const int64_t* J = plan.groups->pair_j.data() + first;
  const T* q = scratch.role<T>(o, plan, kQ, g, I, P);
  const T* k = scratch.role<T>(o, plan, kK, g, J, P);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t row = (b * P + p) * H + h;
        scores[((b * H + h) * rows + I[p] - row0) * N + J[p]] = dot(q + row * d, k + row * d, d) * scale;
      }
}

// The pairs [first, last) of group g: their values weighted by the softmax weights (B, H, rows, N)
// added to out (B, rows, H * dv) at query row i - row0.
template <typename T>
void range_values(const Operands& o, const AttentionPlan& plan, int64_t g, int64_t first, int64_t last, int64_t row0,
                  int64_t rows, const T* weights, T* out, ForwardScratch& scratch) {
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV), P = last - first;
  const int64_t* I = plan.groups->pair_i.data() + first;
  const int64_t* J = plan.groups->pair_j.data() + first;
  const T* v = scratch.role<T>(o, plan, kV, g, J, P);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const T a = weights[((b * H + h) * rows + I[p] - row0) * N + J[p]];
        const T* from = v + ((b * P + p) * H + h) * dv;
        T* to = out + ((b * rows + I[p] - row0) * H + h) * dv;
        for (int64_t e = 0; e < dv; ++e) to[e] += a * from[e];
      }
}

at::Tensor unscored(const AttentionPlan& plan, int64_t rows, const at::TensorOptions& opts) {
  return at::full({plan.B, plan.H, rows, plan.N}, -std::numeric_limits<double>::infinity(), opts);
}

void forward_by_groups(const Operands& o, const AttentionPlan& plan, double scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t B = plan.B, N = plan.N;
  const PairGroups& groups = *plan.groups;
  const std::vector<std::vector<int64_t>> lists = group_lists(groups, std::max(1, at::get_num_threads()));
  const int64_t slots = static_cast<int64_t>(lists.size()), pairs = static_cast<int64_t>(groups.pair_i.size());
  const int64_t work = B * pairs / slots * pair_work(plan);
  at::Tensor scores = unscored(plan, N, out.options());
  parallel_for_items(0, slots, work, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      ForwardScratch scratch(o, plan, largest_group_rows(groups, lists[t], B), out.options());
      AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "translution_attention", [&] {
        for (const int64_t g : lists[t])
          range_scores<scalar_t>(o, plan, static_cast<scalar_t>(scale), g, groups.group_begin[g],
                                 groups.group_begin[g + 1], 0, N, scores.mutable_data_ptr<scalar_t>(), scratch);
      });
    }
    at::native::cpublas::brgemm_release(false);  // the GEMMs' kernel state of this thread
  });
  lse.copy_(at::logsumexp(scores, -1));
  const at::Tensor weights = scores.sub_(lse.unsqueeze(-1)).exp_();
  std::vector<at::Tensor> partial(slots);
  parallel_for_items(0, slots, work, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      ForwardScratch scratch(o, plan, largest_group_rows(groups, lists[t], B), out.options());
      partial[t] = at::zeros_like(out);
      AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "translution_attention", [&] {
        for (const int64_t g : lists[t])
          range_values<scalar_t>(o, plan, g, groups.group_begin[g], groups.group_begin[g + 1], 0, N,
                                 weights.const_data_ptr<scalar_t>(), partial[t].mutable_data_ptr<scalar_t>(), scratch);
      });
    }
    at::native::cpublas::brgemm_release(false);  // the GEMMs' kernel state of this thread
  });
  // Summed in thread order: deterministic for a given thread count.
  out.copy_(partial[0]);
  for (int64_t t = 1; t < slots; ++t) out.add_(partial[t]);
}

void forward_by_row_blocks(const Operands& o, const AttentionPlan& plan, double scale, at::Tensor& out,
                           at::Tensor& lse) {
  const int64_t B = plan.B, N = plan.N, G = plan.num_groups();
  const PairGroups& groups = *plan.groups;
  const std::vector<int64_t> starts = row_blocks(groups, N, std::max(1, at::get_num_threads()));
  const int64_t blocks = static_cast<int64_t>(starts.size()) - 1;
  const int64_t pairs = static_cast<int64_t>(groups.pair_i.size());
  parallel_for_items(0, blocks, B * pairs / blocks * pair_work(plan), [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t i0 = starts[blk], i1 = starts[blk + 1], rows = i1 - i0;
      // The block's pairs in every group (pair_i is sorted within a group): group, begin, end.
      std::vector<std::array<int64_t, 3>> ranges;
      int64_t largest = 0;
      for (int64_t g = 0; g < G; ++g) {
        const auto gb = groups.pair_i.begin() + groups.group_begin[g];
        const auto ge = groups.pair_i.begin() + groups.group_begin[g + 1];
        const int64_t b = std::lower_bound(gb, ge, i0) - groups.pair_i.begin();
        const int64_t e = std::lower_bound(gb, ge, i1) - groups.pair_i.begin();
        if (b < e) ranges.push_back({g, b, e});
        largest = std::max(largest, B * (e - b));
      }
      ForwardScratch scratch(o, plan, largest, out.options());
      at::Tensor scores = unscored(plan, rows, out.options());
      at::Tensor block_out = at::zeros({B, rows, out.size(2)}, out.options());
      at::Tensor block_lse;
      AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "translution_attention", [&] {
        for (const auto& [g, b, e] : ranges)
          range_scores<scalar_t>(o, plan, static_cast<scalar_t>(scale), g, b, e, i0, rows,
                                 scores.mutable_data_ptr<scalar_t>(), scratch);
        block_lse = at::logsumexp(scores, -1);  // (B, H, rows)
        const at::Tensor weights = scores.sub_(block_lse.unsqueeze(-1)).exp_();
        for (const auto& [g, b, e] : ranges)
          range_values<scalar_t>(o, plan, g, b, e, i0, rows, weights.const_data_ptr<scalar_t>(),
                                 block_out.mutable_data_ptr<scalar_t>(), scratch);
      });
      out.narrow(1, i0, rows).copy_(block_out);
      lse.narrow(2, i0, rows).copy_(block_lse);
    }
    at::native::cpublas::brgemm_release(false);  // the GEMMs' kernel state of this thread
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(
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
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV);
  at::Tensor out = at::empty({B, N, H * dv}, opts);
  at::Tensor lse = at::empty({B, H, N}, opts);
  if (B == 0 || N == 0) return {out.to(dtype), lse};
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && N <= kBlockRows * threads)
    forward_by_groups(o, plan, in.scale, out, lse);
  else
    forward_by_row_blocks(o, plan, in.scale, out, lse);
  return {out.to(dtype), lse};
}

}  // namespace translution_ext
