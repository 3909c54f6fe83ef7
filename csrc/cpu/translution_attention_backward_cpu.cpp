// Backward of the fused Translution attention on CPU, per pair group: each group on one thread, so
// each table row's gradient has one writer.  q, k and the softmax weights are recomputed from the
// saved log-sum-exp (the FlashAttention scheme); v is not (see backward_group).  The per-pair
// gradients feed one GEMM per table row, and the token gradients go to per-thread buffers summed in
// thread order: deterministic for a given thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>

#include "../parallel.h"
#include "translution_attention_cpu.h"

namespace translution_ext {

using namespace attention_cpu;

namespace {

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
  std::array<at::Tensor, 3> source_t;     // and transposed (Cr, rows), for the table gradients
  std::array<at::Tensor, 3> vectors;      // q and k per head (rows, H*d)
  std::array<at::Tensor, 3> grad_vectors; // dq, dk and a*dO_i per head (rows, H*d)
  at::Tensor dOi, grad_source, value_terms, weights;  // (rows, H*dv), (rows, Cr), (H, chunk, Cv), (3, rows, H)
  at::Tensor table_t;  // a table row transposed, (H*dr, Cr)

  BackwardScratch(const BackwardInputs& in, int64_t rows) {
    const AttentionPlan& plan = in.plan;
    const auto opts = in.dO.options();
    int64_t widest_source = 0, table_size = 0;
    for (int r = 0; r < 3; ++r) {
      const int64_t width = plan.H * plan.head_dim(r), Cr = plan.source_dim[r];
      if (r != kV) vectors[r] = at::empty({rows, width}, opts);
      grad_vectors[r] = at::empty({rows, width}, opts);
      if (!in.o.table[r].defined()) continue;
      source[r] = at::empty({rows, Cr}, opts);
      source_t[r] = at::empty({Cr, rows}, opts);
      widest_source = std::max(widest_source, Cr);
      table_size = std::max(table_size, Cr * plan.H * plan.relative_dim[r]);
    }
    dOi = at::empty({rows, plan.H * plan.head_dim(kV)}, opts);
    grad_source = at::empty({rows, widest_source}, opts);
    if (in.o.table[kV].defined()) value_terms = at::empty({plan.H, in.value_chunk, plan.source_dim[kV]}, opts);
    weights = at::empty({3, rows, plan.H}, opts);
    table_t = at::empty({table_size}, opts);
  }
};

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
  // v reads k's gathered rows (and, for its table gradient, their transpose) when both read the
  // same source: Translution's roles all read x.
  const bool v_shares_k = o.table[kK].defined() && o.table[kV].defined() && o.source[kK].is_same(o.source[kV]);
  for (int r = 0; r < 3; ++r) {
    if (!o.table[r].defined()) continue;
    table[r] = o.table[r].select(0, groups.group_class[r][g]);
    dW[r] = grad_table[r].select(0, groups.group_class[r][g]);
    if (M == 0) {
      dW[r].zero_();
      continue;
    }
    if (r == kV && v_shares_k) {
      x[r] = x[kK];
      continue;
    }
    x[r] = scratch.source[r].narrow(0, 0, M);
    gather_rows<T>(o.source[r], tokens[r], B, P, x[r].mutable_data_ptr<T>());
  }
  if (M == 0) return;

  for (int r : {kQ, kK}) role_vectors<T>(o, plan, r, g, tokens[r], P, x[r], scratch.vectors[r].narrow(0, 0, M));
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
  T* table_t = scratch.table_t.mutable_data_ptr<T>();  // (H*dr, Cr): W^T of the role being differentiated
  if (dr_v > 0) {
    const int64_t Cv = plan.source_dim[kV];
    const T* xv = x[kV].const_data_ptr<T>();
    T* grad_xv = mine[3 + kV].mutable_data_ptr<T>();
    transpose_into(table[kV].const_data_ptr<T>(), Cv, H * dr_v, H * dr_v, table_t);
    for (int64_t m0 = 0; m0 < M; m0 += in.value_chunk) {
      const int64_t rows = std::min(M - m0, in.value_chunk);
      for (int64_t h = 0; h < H; ++h)  // g_h (rows, Cv) = dO_h (rows, dr) @ W_h^T (dr, Cv)
        matmul<T>(rows, Cv, dr_v, dO_rows + m0 * H * dv + h * dv + ds_v, H * dv, table_t + h * dr_v * Cv, Cv,
                  scratch.value_terms.mutable_data_ptr<T>() + h * in.value_chunk * Cv, Cv);
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
    const T* grad_rows = scratch.grad_vectors[r].const_data_ptr<T>();
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
    // dW (Cr, H*dr) = x^T (Cr, M) @ grad (M, H*dr), per head when the role has both parts.
    const bool reuses_k = r == kV && v_shares_k;
    T* x_t = scratch.source_t[reuses_k ? kK : r].mutable_data_ptr<T>();
    if (!reuses_k) transpose_into(x[r].const_data_ptr<T>(), M, Cr, Cr, x_t);
    T* grad_table_row = dW[r].mutable_data_ptr<T>();
    for (int64_t h = 0; h < (ds_r == 0 ? 1 : H); ++h)
      matmul<T>(Cr, ds_r == 0 ? H * dr : dr, M, x_t, M, grad_rows + h * d + ds_r, H * d, grad_table_row + h * dr,
                H * dr);
    if (r == kV) continue;  // v's source gradient was added with dA
    // grad x (M, Cr) = sum_h grad_h (M, dr) @ W_h^T (dr, Cr), added to the token rows.
    transpose_into(table[r].const_data_ptr<T>(), Cr, H * dr, H * dr, table_t);
    for (int64_t h = 0; h < (ds_r == 0 ? 1 : H); ++h)
      matmul<T>(M, Cr, ds_r == 0 ? H * dr : dr, grad_rows + h * d + ds_r, H * d, table_t + h * dr * Cr, Cr,
                grad_source.mutable_data_ptr<T>(), grad_source.stride(0), h > 0);
    scatter_add_rows<T>(grad_source.const_data_ptr<T>(), grad_source.stride(0), tokens[r], B, P, mine[3 + r]);
  }
}

}  // namespace

AttentionGrads attention_backward_cpu(
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
      BackwardScratch scratch(inputs, largest_group_rows(groups, lists[t], B));
      AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "translution_attention_backward", [&] {
        for (const int64_t g : lists[t]) backward_group<scalar_t>(inputs, g, scratch, mine, grad_table);
      });
    }
    at::native::cpublas::brgemm_release(false);  // the GEMMs' kernel state of this thread
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
