// Fused Translution attention on CPU, composed of ATen operations: the work items run in
// parallel on the thread pool (BLAS GEMMs inside).  Registered in
// cpu/translution_attention_cpu.cpp; CUDA has its own kernels (cuda/translution_attention_*).
//
// Forward: for every pair group (one q class, one k/v class) the pairs gather their token rows
// and project them with one table row each — dense (B*P, C) x (C, D) GEMMs — into scores;
// softmax and the log-sum-exp per row; then the values are projected the same way and summed
// into the output rows.  The forward runs blocks of at most kBlockRows query rows, the scores of
// each block (B, H, rows, N) at a time (forward_by_row_blocks), or, on several threads with no more
// rows than their blocks would hold at once, whole pair groups per thread (forward_by_groups).
// Backward, per pair group (each on one thread, so each table row's gradient has one
// writer): q, k and the softmax weights are recomputed from the saved log-sum-exp
// (the FlashAttention scheme); v is not (value_backward_terms); the per-pair gradients feed one
// GEMM per table row, and the token gradients go to per-thread buffers summed in thread order.
// Nothing of size N x N x (C or D) is stored.
// Deterministic: every output element has one writer, the thread buffers are summed in order.
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <limits>

#include "parallel.h"
#include "translution_attention.h"

namespace translution_ext {

namespace {

constexpr int64_t kBlockRows = 128;  // query rows of a forward block at most: its scores are (B, H, rows, N)

// Multiply-adds of one pair and batch item in the forward: each role's projection and the
// scores / weighted sum (the backward does about three times as many).
int64_t pair_work(const AttentionPlan& plan) {
  int64_t work = 0;
  for (int r = 0; r < 3; ++r) work += plan.H * (plan.source_dim[r] * plan.relative_dim[r] + plan.head_dim(r));
  return work;
}

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


// The token rows of each relative role's source that the pairs of a group read, (B*P, Cr): q reads
// the query rows I, k and v the key rows J.  v shares k's gather when both read the same source
// (Translution's roles all read x).  Only the roles in `wanted` are gathered.
std::array<at::Tensor, 3> gather_sources(const Operands& o, const AttentionPlan& plan, const at::Tensor& I,
                                         const at::Tensor& J, std::array<bool, 3> wanted) {
  std::array<at::Tensor, 3> rows;
  for (int r = 0; r < 3; ++r) {
    if (!wanted[r] || !o.table[r].defined()) continue;
    if (r == kV && rows[kK].defined() && o.source[kK].is_same(o.source[kV])) {
      rows[r] = rows[kK];
      continue;
    }
    const at::Tensor& index = r == kQ ? I : J;
    rows[r] = o.source[r].index_select(1, index).reshape({plan.B * index.numel(), plan.source_dim[r]});
  }
  return rows;
}

// The role's per-head vectors for the pairs reading token rows `rows` of group g, whose source rows
// are `source_rows` (from gather_sources): (B, P, H, ds + dr), the shared part first.
at::Tensor role_rows(const Operands& o, const AttentionPlan& plan, int role, int64_t g, const at::Tensor& rows,
                     const at::Tensor& source_rows) {
  const int64_t B = plan.B, P = rows.numel(), H = plan.H;
  std::vector<at::Tensor> parts;
  if (o.shared[role].defined())
    parts.push_back(o.shared[role].index_select(1, rows).view({B, P, H, plan.shared_dim[role]}));
  if (o.table[role].defined()) {
    const at::Tensor w = o.table[role].select(0, plan.groups->group_class[role][g]);
    parts.push_back(at::mm(source_rows, w).view({B, P, H, plan.relative_dim[role]}));
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

// Scaled scores of the pairs of group g: (B, P, H).
at::Tensor pair_scores(const Operands& o, const AttentionPlan& plan, double scale, int64_t g, const at::Tensor& I,
                       const at::Tensor& J) {
  const std::array<at::Tensor, 3> src = gather_sources(o, plan, I, J, {true, true, false});
  return (role_rows(o, plan, kQ, g, I, src[kQ]) * role_rows(o, plan, kK, g, J, src[kK])).sum(-1).mul_(scale);
}

// The pairs' weighted values a * v of group g, a: (B, P, H): (B, P, H * dv).
at::Tensor weighted_values(const Operands& o, const AttentionPlan& plan, int64_t g, const at::Tensor& J,
                           const at::Tensor& a) {
  const at::Tensor src = gather_sources(o, plan, J, J, {false, false, true})[kV];
  return (a.unsqueeze(-1) * role_rows(o, plan, kV, g, J, src)).reshape({plan.B, J.numel(), -1});
}

// Forward by pair groups, for N <= kBlockRows x threads (then the row blocks' scores would hold all N
// rows at once too): whole groups run on the threads, as in the backward, so that every group is one
// GEMM of B * P rows (splitting the query rows between threads halved them, and their speed at small
// grids).  The scores of every group (one writer per element), the softmax, then the weighted values
// of each thread's groups into a buffer per thread, summed in thread order (deterministic for a
// given thread count).
void forward_by_groups(const Operands& o, const AttentionPlan& plan, double scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t B = plan.B, N = plan.N, H = plan.H;
  const PairGroups& groups = *plan.groups;
  const std::vector<std::vector<int64_t>> lists = group_lists(groups, std::max(1, at::get_num_threads()));
  const int64_t slots = static_cast<int64_t>(lists.size()), pairs = static_cast<int64_t>(groups.pair_i.size());
  const int64_t work = B * pairs / slots * pair_work(plan);
  auto pair_slices = [&](int64_t g) {
    const int64_t b = groups.group_begin[g], e = groups.group_begin[g + 1];
    return std::array<at::Tensor, 2>{groups.pair_i_on_device.slice(0, b, e), groups.pair_j_on_device.slice(0, b, e)};
  };
  at::Tensor scores = at::full({B, H, N, N}, -std::numeric_limits<double>::infinity(), out.options());
  parallel_for_items(0, slots, work, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t)
      for (const int64_t g : lists[t]) {
        const auto [I, J] = pair_slices(g);
        scores.index_put_({Slice(), Slice(), I, J}, pair_scores(o, plan, scale, g, I, J).permute({0, 2, 1}));
      }
  });
  lse.copy_(at::logsumexp(scores, -1));
  const at::Tensor weights = scores.sub_(lse.unsqueeze(-1)).exp_();
  std::vector<at::Tensor> partial(slots);
  parallel_for_items(0, slots, work, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      partial[t] = at::zeros_like(out);
      for (const int64_t g : lists[t]) {
        const auto [I, J] = pair_slices(g);
        const at::Tensor a = weights.index({Slice(), Slice(), I, J}).permute({0, 2, 1});  // (B, P, H)
        partial[t].index_add_(1, I, weighted_values(o, plan, g, J, a));
      }
    }
  });
  out.copy_(partial[0]);
  for (int64_t t = 1; t < slots; ++t) out.add_(partial[t]);
}

// Forward by blocks of query rows, for any size: the scores of one block, (B, H, rows, N), at a time.
// Rows are computed independently, so the result does not depend on the blocks.
void forward_by_row_blocks(const Operands& o, const AttentionPlan& plan, double scale, at::Tensor& out,
                           at::Tensor& lse) {
  const int64_t B = plan.B, N = plan.N, H = plan.H, G = plan.num_groups();
  const PairGroups& groups = *plan.groups;
  const std::vector<int64_t> starts = row_blocks(groups, N, std::max(1, at::get_num_threads()));
  const int64_t blocks = static_cast<int64_t>(starts.size()) - 1;
  const int64_t pairs = static_cast<int64_t>(groups.pair_i.size());
  parallel_for_items(0, blocks, B * pairs / blocks * pair_work(plan), [&](int64_t first, int64_t last) {
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t i0 = starts[blk], i1 = starts[blk + 1], rows = i1 - i0;
      // The block's pairs in every group: pair_i is sorted within a group.
      struct Segment {
        int64_t g;
        at::Tensor local, J;  // the block's rows (from i0) and key tokens of the group's pairs
      };
      std::vector<Segment> segments;
      for (int64_t g = 0; g < G; ++g) {
        const auto gb = groups.pair_i.begin() + groups.group_begin[g];
        const auto ge = groups.pair_i.begin() + groups.group_begin[g + 1];
        const int64_t b = std::lower_bound(gb, ge, i0) - groups.pair_i.begin();
        const int64_t e = std::lower_bound(gb, ge, i1) - groups.pair_i.begin();
        if (b < e)
          segments.push_back({g, groups.pair_i_on_device.slice(0, b, e) - i0, groups.pair_j_on_device.slice(0, b, e)});
      }
      at::Tensor scores = at::full({B, H, rows, N}, -std::numeric_limits<double>::infinity(), out.options());
      for (const Segment& seg : segments)
        scores.index_put_({Slice(), Slice(), seg.local, seg.J},
                          pair_scores(o, plan, scale, seg.g, seg.local + i0, seg.J).permute({0, 2, 1}));
      at::Tensor block_lse = at::logsumexp(scores, -1);  // (B, H, rows)
      at::Tensor weights = scores.sub_(block_lse.unsqueeze(-1)).exp_();
      at::Tensor block_out = at::zeros({B, rows, out.size(2)}, out.options());
      for (const Segment& seg : segments) {
        at::Tensor a = weights.index({Slice(), Slice(), seg.local, seg.J}).permute({0, 2, 1});  // (B, P, H)
        block_out.index_add_(1, seg.local, weighted_values(o, plan, seg.g, seg.J, a));
      }
      out.narrow(1, i0, rows).copy_(block_out);
      lse.narrow(2, i0, rows).copy_(block_lse);
    }
  });
}

// ---- Backward ----
// Per pair group, everything but the GEMMs runs as loops over the group's rows m = b * P + p
// (batch item b, pair p) in per-thread buffers: at small grids the groups are a few rows and
// the cost was in the dozens of small ATen operations per group, not in the GEMMs.

// Rows of value-gradient terms per chunk: H x rows x Cv of them stay in cache between the GEMMs
// that write them and the loop that reads them.
constexpr int64_t kValueChunkElements = int64_t(1) << 16;

// What every work item of the backward reads, in opmath T and contiguous.
struct BackwardInputs {
  const Operands& o;
  const AttentionPlan& plan;
  double scale;
  at::Tensor dO, L, Drow;  // (B, N, H*dv), (B, H, N) log-sum-exp, (B, H, N) <dO_i, O_i>
  int64_t value_chunk;     // rows per chunk of value-gradient terms
};

// One thread's buffers, sized for its largest group (rows = B * P) and reused for every group.
struct BackwardScratch {
  std::array<at::Tensor, 3> source;       // gathered source rows per relative role (rows, Cr)
  std::array<at::Tensor, 3> vectors;      // q and k per head, then their gradients and a*dO (rows, H*d)
  std::array<at::Tensor, 3> grad_vectors;
  at::Tensor dOi, grad_source, value_terms, weights;  // (rows, H*dv), (rows, Cr), (H, chunk, Cv), (3, rows, H)

  BackwardScratch(const BackwardInputs& in, int64_t rows) {
    const AttentionPlan& plan = in.plan;
    const auto opts = in.dO.options();
    int64_t widest_source = 0;
    for (int r = 0; r < 3; ++r) {
      const int64_t width = plan.H * plan.head_dim(r);
      if (in.o.table[r].defined()) source[r] = at::empty({rows, plan.source_dim[r]}, opts);
      if (in.o.table[r].defined()) widest_source = std::max(widest_source, plan.source_dim[r]);
      if (r != kV) vectors[r] = at::empty({rows, width}, opts);
      grad_vectors[r] = at::empty({rows, width}, opts);
    }
    dOi = at::empty({rows, plan.H * plan.head_dim(kV)}, opts);
    grad_source = at::empty({rows, widest_source}, opts);
    if (in.o.table[kV].defined()) value_terms = at::empty({plan.H, in.value_chunk, plan.source_dim[kV]}, opts);
    weights = at::empty({3, rows, plan.H}, opts);
  }
};

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  // Eight partial sums: the compiler vectorises them without reassociating.
  T partial[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int l = 0; l < 8; ++l) partial[l] += a[c + l] * b[c + l];
  T sum = 0;
  for (; c < n; ++c) sum += a[c] * b[c];
  for (int l = 0; l < 8; ++l) sum += partial[l];
  return sum;
}

// to[m, :] = from[b, tokens[p], :] for the rows m = b * P + p; from: (B, N, width).
template <typename T>
void gather_rows(const at::Tensor& from, const int64_t* tokens, int64_t B, int64_t P, T* to) {
  const int64_t N = from.size(1), width = from.size(2);
  const T* src = from.const_data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      std::copy_n(src + (b * N + tokens[p]) * width, width, to + (b * P + p) * width);
}

// to[b, tokens[p], :] += from[m, :] (from's rows of `width` values, `stride` apart); to: (B, N, width).
template <typename T>
void scatter_add_rows(const T* from, int64_t stride, const int64_t* tokens, int64_t B, int64_t P, at::Tensor& to) {
  const int64_t N = to.size(1), width = to.size(2);
  T* dst = to.mutable_data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      const T* row = from + (b * P + p) * stride;
      T* out = dst + (b * N + tokens[p]) * width;
      for (int64_t c = 0; c < width; ++c) out[c] += row[c];
    }
}

// The relative part of role r per head, (rows, dr) with rows H*d apart, of a (rows, H*d) buffer.
at::Tensor relative_part(const at::Tensor& per_head, const AttentionPlan& plan, int r, int64_t h) {
  const int64_t d = plan.head_dim(r), ds = plan.shared_dim[r], dr = plan.relative_dim[r];
  return per_head.narrow(1, h * d + ds, dr);
}

// The backward of group g: table rows of its classes (owned by this group), token gradients added
// to `mine` (slots 0..2 the shared parts, 3..5 the sources).
template <typename T>
void backward_group(const BackwardInputs& in, int64_t g, BackwardScratch& scratch, std::array<at::Tensor, 6>& mine,
                    std::array<at::Tensor, 3>& grad_table) {
  const Operands& o = in.o;
  const AttentionPlan& plan = in.plan;
  const PairGroups& groups = *plan.groups;
  const int64_t B = plan.B, N = plan.N, H = plan.H, dv = plan.head_dim(kV), dqk = plan.head_dim(kQ);
  const int64_t first = groups.group_begin[g], P = groups.group_begin[g + 1] - first, M = B * P;
  const std::array<const int64_t*, 3> tokens = {groups.pair_i.data() + first, groups.pair_j.data() + first,
                                                groups.pair_j.data() + first};
  const int64_t* I = tokens[kQ];
  std::array<at::Tensor, 3> table, dW, x;
  for (int r = 0; r < 3; ++r) {
    if (!o.table[r].defined()) continue;
    table[r] = o.table[r].select(0, groups.group_class[r][g]);
    dW[r] = grad_table[r].select(0, groups.group_class[r][g]);
    if (M == 0) {
      dW[r].zero_();
      continue;
    }
    if (r == kV && x[kK].defined() && o.source[kK].is_same(o.source[kV])) {
      x[r] = x[kK];
      continue;
    }
    x[r] = scratch.source[r].narrow(0, 0, M);
    gather_rows<T>(o.source[r], tokens[r], B, P, x[r].mutable_data_ptr<T>());
  }
  if (M == 0) return;

  // q and k per head: [shared | relative] (the relative part one GEMM, or one per head when both).
  for (int r : {kQ, kK}) {
    const int64_t d = plan.head_dim(r), ds = plan.shared_dim[r], dr = plan.relative_dim[r];
    at::Tensor vec = scratch.vectors[r].narrow(0, 0, M);
    if (ds > 0) {
      const T* shared = o.shared[r].const_data_ptr<T>();
      T* out = vec.mutable_data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t h = 0; h < H; ++h)
            std::copy_n(shared + ((b * N + tokens[r][p]) * H + h) * ds, ds, out + ((b * P + p) * H + h) * d);
    }
    if (dr == 0) continue;
    if (ds == 0) {
      at::mm_out(vec, x[r], table[r]);
    } else {
      for (int64_t h = 0; h < H; ++h) {
        at::Tensor part = relative_part(vec, plan, r, h);
        at::mm_out(part, x[r], table[r].narrow(1, h * dr, dr));
      }
    }
  }
  const T* q = scratch.vectors[kQ].const_data_ptr<T>();
  const T* k = scratch.vectors[kK].const_data_ptr<T>();
  T* a = scratch.weights[0].mutable_data_ptr<T>();   // softmax weights (M, H)
  T* dA = scratch.weights[1].mutable_data_ptr<T>();  // dO_i . v (M, H)
  T* ds = scratch.weights[2].mutable_data_ptr<T>();  // score gradients (M, H)
  const T* L = in.L.const_data_ptr<T>();
  const T* Drow = in.Drow.const_data_ptr<T>();
  const T scale = static_cast<T>(in.scale);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t m = b * P + p, row = m * H + h;
        a[row] = std::exp(dot(q + row * dqk, k + row * dqk, dqk) * scale - L[(b * H + h) * N + I[p]]);
      }

  // dA = dO_i . v per head: the shared part directly; the relative part without projecting v: per
  // head, g_h = dO_h W_h^T (rows x Cv) gives dO_h . v_h = g_h . x_j and v's source gradient
  // sum_h a_h g_h, one GEMM pass instead of two.
  at::Tensor dOi = scratch.dOi.narrow(0, 0, M);
  gather_rows<T>(in.dO, I, B, P, dOi.mutable_data_ptr<T>());
  const T* dO_rows = dOi.const_data_ptr<T>();
  const int64_t ds_v = plan.shared_dim[kV], dr_v = plan.relative_dim[kV];
  std::fill(dA, dA + M * H, T(0));
  if (ds_v > 0) {
    const T* shared = o.shared[kV].const_data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t m = b * P + p;
          dA[m * H + h] = dot(dO_rows + (m * H + h) * dv, shared + ((b * N + tokens[kV][p]) * H + h) * ds_v, ds_v);
        }
  }
  if (dr_v > 0) {
    const int64_t Cv = plan.source_dim[kV];
    const T* xv = x[kV].const_data_ptr<T>();
    T* grad_xv = mine[3 + kV].mutable_data_ptr<T>();
    for (int64_t m0 = 0; m0 < M; m0 += in.value_chunk) {
      const int64_t rows = std::min(M - m0, in.value_chunk);
      for (int64_t h = 0; h < H; ++h) {
        at::Tensor terms = scratch.value_terms.select(0, h).narrow(0, 0, rows);
        at::mm_out(terms, dOi.narrow(0, m0, rows).narrow(1, h * dv + ds_v, dr_v),
                   table[kV].narrow(1, h * dr_v, dr_v).t());
      }
      const T* terms = scratch.value_terms.const_data_ptr<T>();
      for (int64_t m = m0; m < m0 + rows; ++m) {
        const int64_t b = m / P, p = m % P;
        T* out = grad_xv + (b * N + tokens[kV][p]) * Cv;
        for (int64_t h = 0; h < H; ++h) {
          const T* gh = terms + (h * in.value_chunk + (m - m0)) * Cv;
          dA[m * H + h] += dot(gh, xv + m * Cv, Cv);
          const T ah = a[m * H + h];
          for (int64_t c = 0; c < Cv; ++c) out[c] += ah * gh[c];
        }
      }
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t row = (b * P + p) * H + h;
        ds[row] = a[row] * (dA[row] - Drow[(b * H + h) * N + I[p]]) * scale;
      }

  // Per-pair gradients of the role vectors: dq = ds k, dk = ds q, d(a v) = a dO_i.
  T* grad_q = scratch.grad_vectors[kQ].mutable_data_ptr<T>();
  T* grad_k = scratch.grad_vectors[kK].mutable_data_ptr<T>();
  T* grad_v = scratch.grad_vectors[kV].mutable_data_ptr<T>();
  for (int64_t row = 0; row < M * H; ++row) {
    for (int64_t e = 0; e < dqk; ++e) {
      grad_q[row * dqk + e] = ds[row] * k[row * dqk + e];
      grad_k[row * dqk + e] = ds[row] * q[row * dqk + e];
    }
    for (int64_t e = 0; e < dv; ++e) grad_v[row * dv + e] = a[row] * dO_rows[row * dv + e];
  }
  for (int r = 0; r < 3; ++r) {
    const int64_t d = plan.head_dim(r), ds_r = plan.shared_dim[r], dr = plan.relative_dim[r];
    const at::Tensor grad = scratch.grad_vectors[r].narrow(0, 0, M);
    const T* grad_rows = grad.const_data_ptr<T>();
    if (ds_r > 0) {
      T* out = mine[r].mutable_data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t h = 0; h < H; ++h) {
            const T* from = grad_rows + ((b * P + p) * H + h) * d;
            T* to = out + ((b * N + tokens[r][p]) * H + h) * ds_r;
            for (int64_t e = 0; e < ds_r; ++e) to[e] += from[e];
          }
    }
    if (dr == 0) continue;
    const int64_t Cr = plan.source_dim[r];
    at::Tensor grad_source = scratch.grad_source.narrow(0, 0, M).narrow(1, 0, Cr);
    if (ds_r == 0) {
      at::mm_out(dW[r], x[r].t(), grad);
      if (r != kV) at::mm_out(grad_source, grad, table[r].t());
    } else {
      for (int64_t h = 0; h < H; ++h) {
        at::Tensor dW_h = dW[r].narrow(1, h * dr, dr);
        const at::Tensor part = relative_part(grad, plan, r, h), w_h = table[r].narrow(1, h * dr, dr);
        at::mm_out(dW_h, x[r].t(), part);
        if (r == kV) continue;
        if (h == 0)
          at::mm_out(grad_source, part, w_h.t());
        else
          grad_source.addmm_(part, w_h.t());
      }
    }
    if (r != kV)  // v's source gradient was added with dA
      scatter_add_rows<T>(grad_source.const_data_ptr<T>(), grad_source.stride(0), tokens[r], B, P, mine[3 + r]);
  }
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
  const PairGroups& groups = *plan.groups;
  const int64_t widest = std::max<int64_t>(1, H * plan.source_dim[kV]);
  const BackwardInputs inputs{o, plan, in.scale, dO, L, Drow, std::max<int64_t>(8, kValueChunkElements / widest)};
  const int64_t pairs = static_cast<int64_t>(groups.pair_i.size()), slots = static_cast<int64_t>(lists.size());
  parallel_for_items(0, slots, 3 * B * pairs / slots * pair_work(plan), [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      auto& mine = local[t];
      for (int r = 0; r < 3; ++r) {
        if (o.shared[r].defined()) mine[r] = at::zeros_like(o.shared[r]);
        if (o.source[r].defined()) mine[3 + r] = at::zeros_like(o.source[r]);
      }
      int64_t rows = 0;
      for (const int64_t g : lists[t])
        rows = std::max(rows, B * (groups.group_begin[g + 1] - groups.group_begin[g]));
      BackwardScratch scratch(inputs, rows);
      AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "translution_attention_backward", [&] {
        for (const int64_t g : lists[t]) backward_group<scalar_t>(inputs, g, scratch, mine, grad_table);
      });
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
