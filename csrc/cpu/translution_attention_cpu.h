// The CPU implementation of the fused Translution attention
// (translution_attention_{forward,backward}_cpu.cpp): what the forward and the backward share.
// Both run whole pair groups (or ranges of a group's pairs) as work items on the thread pool.  In a
// range of P pairs (i_p, j_p), row m = b * P + p belongs to batch item b; its token rows are gathered
// into per-thread buffers, the projections are GEMMs (matmul, into those buffers), and everything
// else runs as loops over the rows: at small grids a group is a few rows, and the dozens of small
// ATen operations per group it took before cost more than the arithmetic.
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <optional>
#include <type_traits>
#include <vector>

#include "../translution_attention.h"

namespace translution_ext::attention_cpu {

struct Operands {
  std::array<at::Tensor, 3> shared, source, table;  // opmath, contiguous; undefined when absent
};

inline Operands to_opmath(const AttentionInputs& in, at::ScalarType op) {
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

inline AttentionInputs make_inputs(const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                                   const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& qs,
                                   const std::optional<at::Tensor>& ks, const std::optional<at::Tensor>& vs,
                                   const std::optional<at::Tensor>& qt, const std::optional<at::Tensor>& kt,
                                   const std::optional<at::Tensor>& vt, const at::Tensor& key_index,
                                   const at::Tensor& query_index, int64_t heads, double scale, bool causal) {
  return AttentionInputs{{q, k, v}, {qs, ks, vs}, {qt, kt, vt}, key_index, query_index, heads, scale, causal};
}

inline at::ScalarType input_dtype(const AttentionInputs& in) {
  for (int r = 0; r < 3; ++r) {
    if (in.shared[r]) return in.shared[r]->scalar_type();
    if (in.source[r]) return in.source[r]->scalar_type();
  }
  return at::kFloat;
}

// Multiply-adds of one pair and batch item in the forward: each role's projection and the
// scores / weighted sum (the backward does about three times as many).
inline int64_t pair_work(const AttentionPlan& plan) {
  int64_t work = 0;
  for (int r = 0; r < 3; ++r) work += plan.H * (plan.source_dim[r] * plan.relative_dim[r] + plan.head_dim(r));
  return work;
}

// Backward work: the pair groups of each thread, the largest first to the least loaded thread
// (a fixed assignment for a given thread count, so the thread buffers sum in a fixed order), each
// list in group order.  Contiguous ranges of groups left one thread with most of the pairs.
inline std::vector<std::vector<int64_t>> group_lists(const PairGroups& groups, int64_t threads) {
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

// Rows (B * P) of the largest group in a thread's list: the size of its per-thread buffers.
inline int64_t largest_group_rows(const PairGroups& groups, const std::vector<int64_t>& list, int64_t B) {
  int64_t rows = 0;
  for (const int64_t g : list) rows = std::max(rows, B * (groups.group_begin[g + 1] - groups.group_begin[g]));
  return rows;
}

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

// out (M, N) = a (M, K) @ b (K, N) (+ out when accumulate), row-major with leading dimensions lda,
// ldb, ldc.  fp32 runs oneDNN's batch-reduce GEMM kernel: on the AVX-512 machine it measured
// 112-115 GFLOP/s on one thread at every M from 8 to 1568 rows (K, N = 64 or 192), where MKL's sgemm
// (at::mm) gave 57-98.  It takes no transposed operand: callers transpose small ones (transpose_into).
template <typename T>
void matmul(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb, T* out, int64_t ldc,
            bool accumulate = false) {
  if constexpr (std::is_same_v<T, float>) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, a, b, out, false);
  } else {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor result = at::from_blob(out, {M, N}, {ldc, 1}, opts);
    const at::Tensor lhs = at::from_blob(const_cast<T*>(a), {M, K}, {lda, 1}, opts);
    const at::Tensor rhs = at::from_blob(const_cast<T*>(b), {K, N}, {ldb, 1}, opts);
    if (accumulate)
      result.addmm_(lhs, rhs);
    else
      at::mm_out(result, lhs, rhs);
  }
}

// to (cols, rows) = from (rows, cols)^T, from's rows ld apart.  fp32 on x86 goes through 4 x 4 blocks
// in SSE registers (baseline x86-64), strips of 4 rows at a time: the element-wise copy took ~25 us per
// 192 x 192 table row, as long as a GEMM of 30 rows with it.
template <typename T>
void transpose_into(const T* from, int64_t rows, int64_t cols, int64_t ld, T* to) {
  int64_t r0 = 0;
#if defined(__SSE__)
  if constexpr (std::is_same_v<T, float>) {
    for (; r0 + 4 <= rows; r0 += 4) {
      const float* f = from + r0 * ld;
      int64_t c = 0;
      for (; c + 4 <= cols; c += 4) {
        __m128 a = _mm_loadu_ps(f + c), b = _mm_loadu_ps(f + ld + c);
        __m128 e = _mm_loadu_ps(f + 2 * ld + c), h = _mm_loadu_ps(f + 3 * ld + c);
        _MM_TRANSPOSE4_PS(a, b, e, h);
        _mm_storeu_ps(to + c * rows + r0, a);
        _mm_storeu_ps(to + (c + 1) * rows + r0, b);
        _mm_storeu_ps(to + (c + 2) * rows + r0, e);
        _mm_storeu_ps(to + (c + 3) * rows + r0, h);
      }
      for (; c < cols; ++c)
        for (int64_t r = r0; r < r0 + 4; ++r) to[c * rows + r] = from[r * ld + c];
    }
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) to[c * rows + r] = from[r * ld + c];
}

// Role r's per-head vectors [shared (ds) | relative (dr)] of the rows of P pairs whose role-r tokens
// are `tokens`, into out (B * P, H * d): the shared part copied, the relative part x @ table[class]
// (one GEMM, or one per head when the role has both parts).  x: the gathered source rows (B * P, Cr).
// A thread that ran it calls at::native::cpublas::brgemm_release() when done.
template <typename T>
void role_vectors(const Operands& o, const AttentionPlan& plan, int r, int64_t g, const int64_t* tokens, int64_t P,
                  const at::Tensor& x, at::Tensor out) {
  const int64_t B = plan.B, N = plan.N, H = plan.H, M = B * P;
  const int64_t d = plan.head_dim(r), ds = plan.shared_dim[r], dr = plan.relative_dim[r];
  T* to = out.mutable_data_ptr<T>();
  if (ds > 0) {
    const T* shared = o.shared[r].const_data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t h = 0; h < H; ++h)
          std::copy_n(shared + ((b * N + tokens[p]) * H + h) * ds, ds, to + ((b * P + p) * H + h) * d);
  }
  if (dr == 0 || M == 0) return;
  const int64_t Cr = plan.source_dim[r];
  const T* table = o.table[r].const_data_ptr<T>() + plan.groups->group_class[r][g] * Cr * H * dr;
  const T* from = x.const_data_ptr<T>();
  if (ds == 0)
    matmul<T>(M, H * dr, Cr, from, Cr, table, H * dr, to, H * d);
  else
    for (int64_t h = 0; h < H; ++h) matmul<T>(M, dr, Cr, from, Cr, table + h * dr, H * dr, to + h * d + ds, H * d);
}

}  // namespace translution_ext::attention_cpu
