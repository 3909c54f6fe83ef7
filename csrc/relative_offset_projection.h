// Relative-offset projection: shared declarations for every backend.
//
//   side == Key:   out[b, i, j, :] = x[b, j, :] @ weight[index[i, j]]
//   side == Query: out[b, i, j, :] = x[b, i, :] @ weight[index[i, j]]
//
// x: (B, N, C), weight: (R, C, D), index: (Nq, Nk) int32/int64 in [0, R),
// out: (B, Nq, Nk, D).  The "source token" of pair (i, j) is the row of x it
// reads: j for the key side, i for the query side.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/string_view.h>

#include "checks.h"

namespace translution_ext {

enum class ProjectionSide { Key, Query };

// Pairs (i, j), flattened as p = i * Nk + j, grouped two ways.  Built with
// ATen ops, so the same code plans for CPU and CUDA.
struct PairPlan {
  // Pairs of class r: by_class[class_offsets[r] : class_offsets[r + 1]],
  // in increasing pair order.  class_offsets: (R + 1,), by_class: (P,) int64.
  at::Tensor class_offsets;
  at::Tensor by_class;
  // Pairs sorted by (source block, class, source token, pair), where a
  // source block is `src_block` consecutive source tokens.  Pairs whose
  // source token is s start at by_src[src_offsets[s]] only when src_block
  // is 1; in general src_offsets[s0] for s0 a multiple of src_block marks
  // the start of a block.  src_offsets: (Nsrc + 1,), by_src: (P,) int64.
  // Left undefined when the plan is built with src_block == 0.
  at::Tensor src_offsets;
  at::Tensor by_src;
  // Class of every pair, flattened index: (P,) int64.
  at::Tensor pair_class;
};

// The plan of an index map, built once per (index tensor, version) and cached: later calls
// with the same index map read no index values on the host.
PairPlan build_pair_plan(const at::Tensor& index, int64_t num_classes,
                         ProjectionSide side, int64_t src_block);

// Number of source tokens: Nk for the key side, Nq for the query side.
inline int64_t num_source_tokens(const at::Tensor& index, ProjectionSide side) {
  return side == ProjectionSide::Key ? index.size(1) : index.size(0);
}

// Sizes of one problem; passed by value to the kernels.
struct Geometry {
  int64_t B, Ns, C, D, Nq, Nk, R;  // Ns: number of source tokens (x.size(1))
  bool key_side;
  C10_HOST_DEVICE int64_t pairs() const { return Nq * Nk; }
  C10_HOST_DEVICE int64_t source_of(int64_t pair) const {
    return key_side ? pair % Nk : pair / Nk;
  }
  // Kernels grouped by class number the rows of class r as (b, k-th pair of
  // the class), b-major.  For such a row: where its x row and its output /
  // grad_out row start (element offsets into x (B, Ns, C) and out (B, P, D)).
  struct RowOffsets {
    int64_t x, out;
  };
  C10_HOST_DEVICE RowOffsets class_row(const int64_t* class_pairs, int64_t count,
                                       int64_t row) const {
    const int64_t b = row / count, p = class_pairs[row % count];
    return {(b * Ns + source_of(p)) * C, (b * pairs() + p) * D};
  }
};

// What every backend does before its kernel: parse `side` ("key"/"query"),
// check shapes, dtypes, devices and the index range (once per index map, see
// build_pair_plan; errors name the argument and the expected value and surface in Python as
// ValueError or TypeError), and allocate the result (forward:
// uninitialised (B, Nq, Nk, D); grads: zeros).  `trivial` means the result is
// already final (nothing to compute), so the kernel must not run.
struct Problem {
  ProjectionSide side;
  Geometry g;
  at::Tensor result;
  bool trivial;
};
Problem prepare_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& index,
                        c10::string_view side);
Problem prepare_grad_x(const at::Tensor& grad_out, const at::Tensor& weight,
                       const at::Tensor& index, c10::string_view side);
Problem prepare_grad_weight(const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& index, c10::string_view side, int64_t num_classes);

}  // namespace translution_ext
