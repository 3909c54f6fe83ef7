// Fused Translution attention: schemas, argument checks, pair groups.
#include "translution_attention.h"

#include <torch/library.h>

#include "relative_offset_projection.h"

namespace translution_ext {

namespace {

constexpr const char* kOp = "translution_attention: ";
const char* const kRole[3] = {"q", "k", "v"};

at::Tensor index_on_cpu(const at::Tensor& index) {
  return index.to(at::kCPU, at::kLong).contiguous();
}

void check_role(const AttentionInputs& in, int role, int64_t& D) {
  const auto& t = in.table[role];
  const auto& s = in.shared[role];
  const std::string name = kRole[role];
  TORCH_CHECK_VALUE(t.has_value() != s.has_value(), kOp, "exactly one of ", name, "_table and ",
                    name, " must be given (the role is relative or shared), got ",
                    t.has_value() ? "both" : "neither");
  const at::Tensor& v = t.has_value() ? *t : *s;
  const std::string arg = t.has_value() ? name + "_table" : name;
  TORCH_CHECK_TYPE(v.scalar_type() == in.x.scalar_type(), kOp, arg,
                   " must have the same dtype as x (", in.x.scalar_type(), "), got ",
                   v.scalar_type());
  TORCH_CHECK_VALUE(v.device() == in.x.device(), kOp, arg, " must be on the same device as x (",
                    in.x.device(), "), got ", v.device());
  if (t.has_value()) {
    TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) > 0 && v.size(1) == in.x.size(2), kOp, arg,
                      " must have shape (R, C, D) with R > 0 and C == x.size(2) == ", in.x.size(2),
                      ", got ", shape_str(v));
  } else {
    TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == in.x.size(0) && v.size(1) == in.x.size(1), kOp,
                      arg, " must have shape (B, N, D) with (B, N) == x.shape[:2] == (",
                      in.x.size(0), ", ", in.x.size(1), "), got ", shape_str(v));
  }
  if (D < 0) D = v.size(2);
  TORCH_CHECK_VALUE(v.size(2) == D, kOp, arg, " must have the same last dimension D as the other ",
                    "roles (", D, "), got ", shape_str(v));
}

void check_range(const at::Tensor& index, const char* name, int64_t rows, const char* table) {
  if (index.numel() == 0) return;
  const auto minmax = at::aminmax(index);
  const int64_t lo = std::get<0>(minmax).item<int64_t>(), hi = std::get<1>(minmax).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < rows, kOp, name, " values must lie in [0, R) with R = ", table,
                    ".size(0) == ", rows, ", got min ", lo, " and max ", hi);
}

}  // namespace

at::ScalarType attention_opmath(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

AttentionPlan prepare_attention(const AttentionInputs& in) {
  const at::Tensor& x = in.x;
  TORCH_CHECK_VALUE(x.dim() == 3, kOp, "x must be a 3-D tensor (B, N, C), got shape ", shape_str(x));
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, kOp,
                   "x must have dtype float16, bfloat16, float32 or float64, got ", dt);
  AttentionPlan plan;
  plan.B = x.size(0);
  plan.N = x.size(1);
  plan.C = x.size(2);
  int64_t D = -1;
  for (int role = 0; role < 3; ++role) {
    check_role(in, role, D);
    plan.relative[role] = in.table[role].has_value();
  }
  plan.D = D;
  TORCH_CHECK_VALUE(plan.relative[kQ] || plan.relative[kK] || plan.relative[kV], kOp,
                    "at least one of q_table, k_table, v_table must be given");
  TORCH_CHECK_VALUE(in.heads >= 1 && D % in.heads == 0, kOp, "heads must divide D == ", D,
                    ", got ", in.heads);
  plan.H = in.heads;
  for (const auto* pair : {&in.key_index, &in.query_index}) {
    const char* name = pair == &in.key_index ? "key_index" : "query_index";
    TORCH_CHECK_VALUE(pair->dim() == 2 && pair->size(0) == plan.N && pair->size(1) == plan.N, kOp,
                      name, " must have shape (N, N) with N == x.size(1) == ", plan.N, ", got ",
                      shape_str(*pair));
    TORCH_CHECK_TYPE(pair->scalar_type() == at::kLong || pair->scalar_type() == at::kInt, kOp, name,
                     " must have dtype int64 or int32, got ", pair->scalar_type());
    TORCH_CHECK_VALUE(pair->device() == x.device(), kOp, name, " must be on the same device as x (",
                      x.device(), "), got ", pair->device());
  }
  const at::Tensor K = index_on_cpu(in.key_index), Q = index_on_cpu(in.query_index);
  if (plan.relative[kQ]) check_range(Q, "query_index", in.table[kQ]->size(0), "q_table");
  for (int role : {kK, kV})
    if (plan.relative[role]) check_range(K, "key_index", in.table[role]->size(0), role == kK ? "k_table" : "v_table");

  // Group the pairs by their k/v class (or q class when only q is relative).
  const int64_t N = plan.N;
  const bool by_key = plan.relative[kK] || plan.relative[kV];
  const int64_t* kp = K.data_ptr<int64_t>();
  const int64_t* qp = Q.data_ptr<int64_t>();
  const int64_t* gp = by_key ? kp : qp;
  int64_t num_keys = 0;
  for (int64_t p = 0; p < N * N; ++p) num_keys = std::max(num_keys, gp[p] + 1);
  std::vector<int64_t> count(num_keys, 0);
  auto unmasked = [&](int64_t i, int64_t j) { return !in.causal || j <= i; };
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j)
      if (unmasked(i, j)) ++count[gp[i * N + j]];
  std::vector<int64_t> slot(num_keys, -1);  // group key -> group number
  plan.group_begin.push_back(0);
  for (int64_t g = 0; g < num_keys; ++g) {
    if (!count[g]) continue;
    slot[g] = plan.num_groups();
    plan.group_begin.push_back(plan.group_begin.back() + count[g]);
  }
  const int64_t G = plan.num_groups(), P = plan.group_begin.back();
  plan.pair_i.resize(P);
  plan.pair_j.resize(P);
  for (auto& c : plan.group_class) c.assign(G, -1);
  std::vector<int64_t> fill(plan.group_begin.begin(), plan.group_begin.end() - 1);
  std::vector<char> q_class_used(plan.relative[kQ] ? in.table[kQ]->size(0) : 0, 0);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      if (!unmasked(i, j)) continue;
      const int64_t g = slot[gp[i * N + j]];
      const int64_t at = fill[g]++;
      plan.pair_i[at] = i;
      plan.pair_j[at] = j;
      for (int role = 0; role < 3; ++role) {
        if (!plan.relative[role]) continue;
        const int64_t cls = role == kQ ? qp[i * N + j] : kp[i * N + j];
        int64_t& mine = plan.group_class[role][g];
        if (mine < 0 && role == kQ) {
          // Each q row must belong to one group only, so that one work item owns its gradient.
          TORCH_CHECK_VALUE(!q_class_used[cls], kOp, "the fused path needs index maps in which the ",
                            "k/v offset class of a pair determines its q class (true for every ",
                            "Translution layout); query row ", cls, " is paired with several k/v rows");
          q_class_used[cls] = 1;
        }
        TORCH_CHECK_VALUE(mine < 0 || mine == cls, kOp, "the fused path needs index maps in which the ",
                          "k/v offset class of a pair determines its q class (true for every ",
                          "Translution layout); pairs of k/v class ", gp[i * N + j], " use q rows ",
                          mine, " and ", cls);
        mine = cls;
      }
    }
  }
  return plan;
}

}  // namespace translution_ext

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def(
      "translution_attention(Tensor x, Tensor? q_table, Tensor? k_table, Tensor? v_table, Tensor? q, "
      "Tensor? k, Tensor? v, Tensor key_index, Tensor query_index, int heads, float scale, "
      "bool causal) -> (Tensor, Tensor)");
  m.def(
      "translution_attention_backward(Tensor grad_out, Tensor x, Tensor? q_table, Tensor? k_table, "
      "Tensor? v_table, Tensor? q, Tensor? k, Tensor? v, Tensor key_index, Tensor query_index, "
      "Tensor out, Tensor lse, int heads, float scale, bool causal) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");
}
