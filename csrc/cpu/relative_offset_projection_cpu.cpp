// CPU kernels of the relative-offset projection.
//
// Pairs are grouped by offset class, so every class becomes dense GEMMs with
// one weight matrix: gather the source rows of a tile of pairs, multiply by
// weight[r] (BLAS through at::mm_out), scatter the rows to the output.  Every
// output element is owned by exactly one work item, so there are no atomics
// and the results do not depend on the number of threads (deterministic).
// Half types are gathered into float buffers and accumulate in float.
#include "../parallel.h"
#include "../relative_offset_projection.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace translution_ext {
namespace {

// Rows per GEMM: a 256 x C tile plus one C x D matrix stay in L2.
constexpr int64_t kTileRows = 256;

template <typename dst_t, typename src_t>
inline void copy_row(dst_t* dst, const src_t* src, int64_t n) {
  if constexpr (std::is_same_v<dst_t, src_t>) {
    std::memcpy(dst, src, n * sizeof(dst_t));
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<dst_t>(src[k]);
  }
}

template <typename dst_t, typename src_t>
inline void add_row(dst_t* dst, const src_t* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += static_cast<dst_t>(src[k]);
}

// A plain (no autograd) tensor over raw memory, for at::mm_out on buffers.
template <typename T>
at::Tensor matrix(T* data, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<std::remove_const_t<T>*>(data), {rows, cols},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<std::remove_const_t<T>>::value));
}

// weight[r] as acc_t: the weight itself when no conversion is needed,
// otherwise converted into `buffer` (C * D elements).
template <typename scalar_t, typename acc_t>
const acc_t* class_matrix(const scalar_t* weight, int64_t r, const Geometry& g, acc_t* buffer) {
  const scalar_t* w = weight + r * g.C * g.D;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return w;
  } else {
    copy_row(buffer, w, g.C * g.D);
    return buffer;
  }
}

template <typename acc_t>
at::Tensor scratch(int64_t n) {
  return at::empty({std::max<int64_t>(n, 1)}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// out[b, p, :] = x[b, src(p), :] @ weight[class(p)]
template <typename scalar_t>
void forward_kernel(const scalar_t* x, const scalar_t* weight, const PairPlan& plan,
                    const Geometry& g, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* offsets = plan.class_offsets.data_ptr<int64_t>();
  const int64_t* pairs = plan.by_class.data_ptr<int64_t>();
  // Work items (class, first row); rows of a class are (b, k-th pair), b-major.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t r = 0; r < g.R; ++r) {
    const int64_t rows = g.B * (offsets[r + 1] - offsets[r]);
    for (int64_t row0 = 0; row0 < rows; row0 += kTileRows) tiles.emplace_back(r, row0);
  }
  parallel_for_items(0, static_cast<int64_t>(tiles.size()), kTileRows * g.C * g.D, [&](int64_t begin, int64_t end) {
    at::Tensor a_buf = scratch<acc_t>(kTileRows * g.C), y_buf = scratch<acc_t>(kTileRows * g.D),
               w_buf = scratch<acc_t>(g.C * g.D);
    acc_t* a = a_buf.data_ptr<acc_t>();
    acc_t* y = y_buf.data_ptr<acc_t>();
    for (int64_t t = begin; t < end; ++t) {
      const auto [r, row0] = tiles[t];
      const int64_t count = offsets[r + 1] - offsets[r];
      const int64_t* class_pairs = pairs + offsets[r];
      const int64_t rows = std::min(kTileRows, g.B * count - row0);
      for (int64_t m = 0; m < rows; ++m)
        copy_row(a + m * g.C, x + g.class_row(class_pairs, count, row0 + m).x, g.C);
      const acc_t* w = class_matrix(weight, r, g, w_buf.data_ptr<acc_t>());
      auto y_mat = matrix(y, rows, g.D);
      at::mm_out(y_mat, matrix(a, rows, g.C), matrix(w, g.C, g.D));
      for (int64_t m = 0; m < rows; ++m)
        copy_row(out + g.class_row(class_pairs, count, row0 + m).out, y + m * g.D, g.D);
    }
  });
}

// grad_weight[r] = sum over pairs p of class r and b of x[b, src(p)]^T grad_out[b, p]
template <typename scalar_t>
void grad_weight_kernel(const scalar_t* grad_out, const scalar_t* x, const PairPlan& plan,
                        const Geometry& g, scalar_t* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* offsets = plan.class_offsets.data_ptr<int64_t>();
  const int64_t* pairs = plan.by_class.data_ptr<int64_t>();
  parallel_for_items(0, g.R, g.B * g.pairs() / std::max<int64_t>(1, g.R) * g.C * g.D, [&](int64_t begin, int64_t end) {
    at::Tensor xa_buf = scratch<acc_t>(kTileRows * g.C), ga_buf = scratch<acc_t>(kTileRows * g.D),
               acc_buf = scratch<acc_t>(g.C * g.D);
    acc_t* xa = xa_buf.data_ptr<acc_t>();
    acc_t* ga = ga_buf.data_ptr<acc_t>();
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* target = grad_weight + r * g.C * g.D;
      acc_t* acc;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        acc = target;
      } else {
        acc = acc_buf.data_ptr<acc_t>();
      }
      const int64_t count = offsets[r + 1] - offsets[r];
      const int64_t* class_pairs = pairs + offsets[r];
      const int64_t total = g.B * count;
      if (total == 0) std::fill(acc, acc + g.C * g.D, acc_t(0));
      auto acc_mat = matrix(acc, g.C, g.D);
      for (int64_t row0 = 0; row0 < total; row0 += kTileRows) {
        const int64_t rows = std::min(kTileRows, total - row0);
        for (int64_t m = 0; m < rows; ++m) {
          const auto at = g.class_row(class_pairs, count, row0 + m);
          copy_row(xa + m * g.C, x + at.x, g.C);
          copy_row(ga + m * g.D, grad_out + at.out, g.D);
        }
        acc_mat.addmm_(matrix(xa, rows, g.C).t(), matrix(ga, rows, g.D),
                       /*beta=*/row0 == 0 ? 0 : 1, /*alpha=*/1);
      }
      if constexpr (!std::is_same_v<scalar_t, acc_t>) copy_row(target, acc, g.C * g.D);
    }
  });
}

// grad_x[b, s] = sum over pairs p with src(p) == s of grad_out[b, p] @ weight[class(p)]^T.
// Work items are blocks of `block` source tokens (the plan's src_block); in a
// block, pairs come grouped by class, and within a class by source token, so
// the grad_out rows of one (source, class) are summed before a single GEMM.
template <typename scalar_t>
void grad_x_kernel(const scalar_t* grad_out, const scalar_t* weight, const PairPlan& plan,
                   const Geometry& g, int64_t block, scalar_t* grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t* src_offsets = plan.src_offsets.data_ptr<int64_t>();
  const int64_t* by_src = plan.by_src.data_ptr<int64_t>();
  const int64_t* pair_class = plan.pair_class.data_ptr<int64_t>();
  const int64_t runs_per_gemm = std::max<int64_t>(1, kTileRows / std::max<int64_t>(g.B, 1));
  const int64_t n_blocks = (g.Ns + block - 1) / block;
  parallel_for_items(0, n_blocks, g.B * g.pairs() / std::max<int64_t>(1, n_blocks) * g.C * g.D, [&](int64_t begin, int64_t end) {
    at::Tensor acc_buf = scratch<acc_t>(g.B * block * g.C),
               a_buf = scratch<acc_t>(runs_per_gemm * g.B * g.D),
               y_buf = scratch<acc_t>(runs_per_gemm * g.B * g.C), w_buf = scratch<acc_t>(g.C * g.D);
    acc_t* acc = acc_buf.data_ptr<acc_t>();  // (B, block, C)
    acc_t* a = a_buf.data_ptr<acc_t>();
    acc_t* y = y_buf.data_ptr<acc_t>();
    std::vector<int64_t> run_source(runs_per_gemm);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t s0 = blk * block, s1 = std::min(s0 + block, g.Ns);
      std::fill(acc, acc + g.B * block * g.C, acc_t(0));
      int64_t e = src_offsets[s0];
      const int64_t e_end = src_offsets[s1];
      while (e < e_end) {
        const int64_t r = pair_class[by_src[e]];
        const acc_t* w = class_matrix(weight, r, g, w_buf.data_ptr<acc_t>());
        // Gather runs (one per source token) of class r, runs_per_gemm at a time.
        while (e < e_end && pair_class[by_src[e]] == r) {
          int64_t runs = 0;
          while (runs < runs_per_gemm && e < e_end && pair_class[by_src[e]] == r) {
            const int64_t s = g.source_of(by_src[e]);
            int64_t e_run = e;
            while (e_run < e_end && pair_class[by_src[e_run]] == r &&
                   g.source_of(by_src[e_run]) == s)
              ++e_run;
            for (int64_t b = 0; b < g.B; ++b) {
              acc_t* row = a + (runs * g.B + b) * g.D;
              const scalar_t* go = grad_out + b * g.pairs() * g.D;
              copy_row(row, go + by_src[e] * g.D, g.D);
              for (int64_t q = e + 1; q < e_run; ++q) add_row(row, go + by_src[q] * g.D, g.D);
            }
            run_source[runs++] = s;
            e = e_run;
          }
          const int64_t rows = runs * g.B;
          auto y_mat = matrix(y, rows, g.C);
          at::mm_out(y_mat, matrix(a, rows, g.D), matrix(w, g.C, g.D).t());
          for (int64_t k = 0; k < runs; ++k)
            for (int64_t b = 0; b < g.B; ++b)
              add_row(acc + (b * block + run_source[k] - s0) * g.C, y + (k * g.B + b) * g.C, g.C);
        }
      }
      for (int64_t b = 0; b < g.B; ++b)
        copy_row(grad_x + (b * g.Ns + s0) * g.C, acc + b * block * g.C, (s1 - s0) * g.C);
    }
  });
}

#define RELPROJ_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor relproj_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& index, c10::string_view side) {
  Problem pb = prepare_forward(x, weight, index, side);
  if (pb.trivial) return pb.result;
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, /*src_block=*/0);
  RELPROJ_DISPATCH(x.scalar_type(), "relproj_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), plan,
                             pb.g, pb.result.mutable_data_ptr<scalar_t>());
  });
  return pb.result;
}

at::Tensor relproj_grad_x_cpu(const at::Tensor& grad_out, const at::Tensor& weight,
                              const at::Tensor& index, c10::string_view side) {
  Problem pb = prepare_grad_x(grad_out, weight, index, side);
  if (pb.trivial) return pb.result;
  const at::Tensor go = grad_out.contiguous(), wc = weight.contiguous();
  const int64_t block = std::max<int64_t>(1, kTileRows / pb.g.B);
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, block);
  RELPROJ_DISPATCH(grad_out.scalar_type(), "relproj_grad_x_cpu", [&] {
    grad_x_kernel<scalar_t>(go.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), plan,
                            pb.g, block, pb.result.mutable_data_ptr<scalar_t>());
  });
  return pb.result;
}

at::Tensor relproj_grad_weight_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                   const at::Tensor& index, c10::string_view side,
                                   int64_t num_classes) {
  Problem pb = prepare_grad_weight(grad_out, x, index, side, num_classes);
  if (pb.trivial) return pb.result;
  const at::Tensor go = grad_out.contiguous(), xc = x.contiguous();
  const PairPlan plan = build_pair_plan(index, pb.g.R, pb.side, /*src_block=*/0);
  RELPROJ_DISPATCH(grad_out.scalar_type(), "relproj_grad_weight_cpu", [&] {
    grad_weight_kernel<scalar_t>(go.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                 plan, pb.g, pb.result.mutable_data_ptr<scalar_t>());
  });
  return pb.result;
}

}  // namespace

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("relative_offset_projection", &relproj_forward_cpu);
  m.impl("relative_offset_projection_grad_x", &relproj_grad_x_cpu);
  m.impl("relative_offset_projection_grad_weight", &relproj_grad_weight_cpu);
}

}  // namespace translution_ext
