// Fused Translution attention: schemas, argument checks and the pair groups shared by
// the kernels.  The op never stores a per-pair (N x N x C or D) tensor: q, k and v of
// the pairs of one offset class are dense (pairs x C) x (C x D) products, scores live
// per query block, and the backward recomputes them from the saved log-sum-exp.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <vector>

namespace translution_ext {

constexpr int kQ = 0, kK = 1, kV = 2;

// Every role is either relative (a table (R, C, D) applied to x) or shared (B, N, D).
struct AttentionInputs {
  at::Tensor x;                                     // (B, N, C)
  std::array<std::optional<at::Tensor>, 3> table;   // q, k, v
  std::array<std::optional<at::Tensor>, 3> shared;  // q, k, v
  at::Tensor key_index, query_index;                // (N, N)
  int64_t heads;
  double scale;
  bool causal;
};

// The unmasked pairs (i, j), grouped so that every group uses one q class and one k/v
// class, and no class appears in two groups: the backward owns each table row.
struct AttentionPlan {
  int64_t B, N, C, D, H;
  std::array<bool, 3> relative;
  std::vector<int64_t> pair_i, pair_j;  // sorted by (group, i, j)
  std::vector<int64_t> group_begin;     // size G + 1
  std::vector<int64_t> group_class[3];  // per role: the table row of the group (or -1)
  int64_t num_groups() const { return static_cast<int64_t>(group_begin.size()) - 1; }
};

// Checks the inputs (ValueError/TypeError naming the argument) and builds the plan.
AttentionPlan prepare_attention(const AttentionInputs& in);

// The dtype the kernels compute in: float for half types, else the input dtype.
at::ScalarType attention_opmath(at::ScalarType t);

}  // namespace translution_ext
