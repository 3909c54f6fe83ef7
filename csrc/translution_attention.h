// Fused Translution attention: schemas, argument checks and the pair groups shared by
// the kernels.  The op never stores a per-pair (N x N x C or D) tensor: q, k and v of
// the pairs of one offset class are dense (pairs x C) x (C x D) products, scores live
// per query block, and the backward recomputes them from the saved log-sum-exp.
//
// Every role r in {q, k, v} has a shared part (B, N, H*ds) and/or a relative part
// source (B, N, Cr) projected by table (R, Cr, H*dr).  Per head the role's vector is
// [shared (ds) | relative (dr)]: Translution uses one part per role, α-Translution
// both (its plain and its relative branch in one softmax).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <memory>
#include <tuple>
#include <optional>
#include <vector>

namespace translution_ext {

constexpr int kQ = 0, kK = 1, kV = 2;

struct AttentionInputs {
  std::array<std::optional<at::Tensor>, 3> shared;  // (B, N, H*ds)
  std::array<std::optional<at::Tensor>, 3> source;  // (B, N, Cr)
  std::array<std::optional<at::Tensor>, 3> table;   // (R, Cr, H*dr)
  at::Tensor key_index, query_index;                // (N, N)
  int64_t heads;
  double scale;
  bool causal;
};

// The unmasked pairs (i, j), grouped so that every group uses one q class and one k/v
// class, and no class appears in two groups: the backward owns each table row.  Depends only
// on the index maps (and causal, the relative roles, the table sizes), so it is built once per
// pair of index tensors and cached (see prepare_attention).
// Query (and key) rows per tile of the CUDA kernels: their work lists are cut at tile edges.
constexpr int64_t kPlanTileRows = 16;

// Where each int32 array of PairGroups::kernel_plan starts (elements).  A segment is three
// ints (group, begin, end): the pairs of one group in one tile, contiguous in pair order
// (query tiles) or in key order (key tiles).
struct KernelPlanLayout {
  int64_t pairs, groups, tiles;       // P, G, ceil(N / kPlanTileRows)
  int64_t pair_i, pair_j;             // [P]
  int64_t group_begin;                // [G + 1]
  int64_t group_class;                // [3 G]: role-major, -1 when the role is not relative
  int64_t key_order;                  // [P]: pair numbers sorted by (group, j, i)
  int64_t query_tile_begin, query_segments;  // [tiles + 1] (in segments), [3 S]
  int64_t key_tile_begin, key_segments;      // [tiles + 1], [3 S']
};

struct PairGroups {
  std::vector<int64_t> pair_i, pair_j;  // sorted by (group, i, j)
  std::vector<int64_t> group_begin;     // size G + 1
  std::vector<int64_t> group_class[3];  // per role: the table row of the group (or -1)
  at::Tensor pair_i_on_device, pair_j_on_device;  // the pair lists on the index maps' device
  // Everything the CUDA kernels read about the pairs, one int32 tensor on the maps' device
  // (copied there once, when the groups are built): see KernelPlanLayout.
  at::Tensor kernel_plan;
  KernelPlanLayout layout;
  int64_t num_groups() const { return static_cast<int64_t>(group_begin.size()) - 1; }
};

struct AttentionPlan {
  int64_t B, N, H;
  std::array<bool, 3> relative;
  std::array<int64_t, 3> shared_dim, relative_dim, source_dim;  // per head: ds, dr; Cr
  std::shared_ptr<const PairGroups> groups;
  int64_t num_groups() const { return groups->num_groups(); }
  int64_t head_dim(int role) const { return shared_dim[role] + relative_dim[role]; }
};

// Checks the inputs (ValueError/TypeError naming the argument) and builds the plan.  The pair
// groups of an index-map pair are built (reading the maps on the host) once per (tensors,
// versions) and cached, so later calls neither copy the maps to the host nor the pair lists
// to the device.
AttentionPlan prepare_attention(const AttentionInputs& in);

// The first given shared tensor or source, in role order: every other input must match its
// dtype, device, B and N.
const at::Tensor& reference_tensor(const AttentionInputs& in);

// The dtype the kernels compute in: float for half types, else the input dtype.
at::ScalarType attention_opmath(at::ScalarType t);

// The op's CPU implementation (cpu/translution_attention_{forward,backward}_cpu.cpp); CUDA
// has its own kernels (cuda/translution_attention_cuda.h).  Arguments follow the op schemas.
std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(
    const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& q_source, const std::optional<at::Tensor>& k_source,
    const std::optional<at::Tensor>& v_source, const std::optional<at::Tensor>& q_table,
    const std::optional<at::Tensor>& k_table, const std::optional<at::Tensor>& v_table, const at::Tensor& key_index,
    const at::Tensor& query_index, int64_t heads, double scale, bool causal);

// Gradients of q, k, v, the three sources and the three tables (empty tensors for absent ones).
using AttentionGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor>;

AttentionGrads attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& q_source,
    const std::optional<at::Tensor>& k_source, const std::optional<at::Tensor>& v_source,
    const std::optional<at::Tensor>& q_table, const std::optional<at::Tensor>& k_table,
    const std::optional<at::Tensor>& v_table, const at::Tensor& key_index, const at::Tensor& query_index,
    const at::Tensor& out, const at::Tensor& lse, int64_t heads, double scale, bool causal);

}  // namespace translution_ext
