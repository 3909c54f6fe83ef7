// Fused Translution attention: schemas, argument checks, pair groups.
#include "translution_attention.h"

#include <torch/library.h>

#include <list>
#include <numeric>
#include <mutex>

#include "checks.h"

namespace translution_ext {

namespace {

constexpr const char* kOp = "translution_attention: ";
const char* const kRole[3] = {"q", "k", "v"};

at::Tensor index_on_cpu(const at::Tensor& index) {
  return index.to(at::kCPU, at::kLong).contiguous();
}

void check_like(const at::Tensor& t, const std::string& name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), kOp, name,
                   " must have the same dtype as the other inputs (", ref.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), kOp, name, " must be on the same device as the other inputs (",
                    ref.device(), "), got ", t.device());
}

void check_tokens(const at::Tensor& t, const std::string& name, const at::Tensor& ref, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == ref.size(0) && t.size(1) == ref.size(1), kOp, name,
                    " must have shape (B, N, ", what, ") with (B, N) == (", ref.size(0), ", ", ref.size(1),
                    ") like the other inputs, got ", shape_str(t));
}

// Per-head widths of one role: shared ds, relative dr, and the source width Cr.
void check_role(const AttentionInputs& in, int role, const at::Tensor& ref, AttentionPlan& plan) {
  const std::string r = kRole[role];
  const auto& shared = in.shared[role];
  const auto& source = in.source[role];
  const auto& table = in.table[role];
  TORCH_CHECK_VALUE(source.has_value() == table.has_value(), kOp, r, "_source and ", r,
                    "_table must be given together (a relative part), got only ",
                    source.has_value() ? r + "_source" : r + "_table");
  TORCH_CHECK_VALUE(shared.has_value() || table.has_value(), kOp, "role ", r, " needs ", r,
                    " (shared) or ", r, "_table with its source (relative), got neither");
  const int64_t H = plan.H;
  plan.shared_dim[role] = plan.relative_dim[role] = plan.source_dim[role] = 0;
  if (shared) {
    check_like(*shared, r, ref);
    check_tokens(*shared, r, ref, "H*d");
    TORCH_CHECK_VALUE(shared->size(2) % H == 0, kOp, r, ".size(2) must be a multiple of heads == ", H,
                      ", got ", shape_str(*shared));
    plan.shared_dim[role] = shared->size(2) / H;
  }
  if (table) {
    check_like(*source, r + "_source", ref);
    check_like(*table, r + "_table", ref);
    check_tokens(*source, r + "_source", ref, "C");
    TORCH_CHECK_VALUE(table->dim() == 3 && table->size(0) > 0 && table->size(1) == source->size(2) &&
                          table->size(2) % H == 0,
                      kOp, r, "_table must have shape (R, C, H*d) with R > 0, C == ", r, "_source.size(2) == ",
                      source->size(2), " and H*d a multiple of heads == ", H, ", got ", shape_str(*table));
    plan.relative_dim[role] = table->size(2) / H;
    plan.source_dim[role] = source->size(2);
  }
}

void check_range(const at::Tensor& index, const char* name, int64_t rows, const char* table) {
  if (index.numel() == 0) return;
  const auto minmax = at::aminmax(index);
  const int64_t lo = std::get<0>(minmax).item<int64_t>(), hi = std::get<1>(minmax).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < rows, kOp, name, " values must lie in [0, R) with R = ", table,
                    ".size(0) == ", rows, ", got min ", lo, " and max ", hi);
}

}  // namespace

const at::Tensor& reference_tensor(const AttentionInputs& in) {
  for (int role = 0; role < 3; ++role) {
    if (in.shared[role]) return *in.shared[role];
    if (in.source[role]) return *in.source[role];
  }
  TORCH_CHECK_VALUE(false, kOp, "no role is given: each of q, k, v needs a shared tensor or a source and a table");
}

at::ScalarType attention_opmath(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

namespace {

// The CUDA kernels' work lists (see KernelPlanLayout), packed into one int32 tensor on `device`.
void build_kernel_plan(PairGroups& groups, int64_t N, const at::Device& device) {
  const int64_t P = groups.group_begin.back(), G = groups.num_groups();
  const int64_t tiles = (N + kPlanTileRows - 1) / kPlanTileRows;
  TORCH_CHECK_VALUE(P < (int64_t(1) << 31) / 4, kOp, "too many pairs for the CUDA kernels' 32-bit plan: ", P);
  std::vector<int64_t> key_order(P);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t b = groups.group_begin[g], e = groups.group_begin[g + 1];
    std::iota(key_order.begin() + b, key_order.begin() + e, b);
    std::stable_sort(key_order.begin() + b, key_order.begin() + e,
                     [&](int64_t x, int64_t y) { return groups.pair_j[x] < groups.pair_j[y]; });
  }
  // Segments per tile: the pairs of each group whose row (query: i, key: j) lies in the tile.
  auto segments = [&](const std::vector<int64_t>& rows, const int64_t* order,
                      std::vector<int32_t>& tile_begin, std::vector<int32_t>& list) {
    std::vector<std::vector<std::array<int64_t, 3>>> per_tile(tiles);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t b = groups.group_begin[g], e = groups.group_begin[g + 1];
      for (int64_t s = b; s < e;) {
        const int64_t tile = rows[order ? order[s] : s] / kPlanTileRows;
        int64_t t = s + 1;
        while (t < e && rows[order ? order[t] : t] / kPlanTileRows == tile) ++t;
        per_tile[tile].push_back({g, s, t});
        s = t;
      }
    }
    tile_begin.assign(1, 0);
    for (const auto& segs : per_tile) {
      for (const auto& seg : segs)
        for (int64_t v : seg) list.push_back(static_cast<int32_t>(v));
      tile_begin.push_back(static_cast<int32_t>(list.size() / 3));
    }
  };
  std::vector<int32_t> query_begin, query_list, key_begin, key_list;
  segments(groups.pair_i, nullptr, query_begin, query_list);
  segments(groups.pair_j, key_order.data(), key_begin, key_list);

  std::vector<int32_t> packed;
  KernelPlanLayout& L = groups.layout;
  L.pairs = P;
  L.groups = G;
  L.tiles = tiles;
  auto append = [&](auto begin, auto end) {
    const int64_t at = static_cast<int64_t>(packed.size());
    for (auto it = begin; it != end; ++it) packed.push_back(static_cast<int32_t>(*it));
    return at;
  };
  L.pair_i = append(groups.pair_i.begin(), groups.pair_i.end());
  L.pair_j = append(groups.pair_j.begin(), groups.pair_j.end());
  L.group_begin = append(groups.group_begin.begin(), groups.group_begin.end());
  L.group_class = append(groups.group_class[0].begin(), groups.group_class[0].end());
  append(groups.group_class[1].begin(), groups.group_class[1].end());
  append(groups.group_class[2].begin(), groups.group_class[2].end());
  L.key_order = append(key_order.begin(), key_order.end());
  L.query_tile_begin = append(query_begin.begin(), query_begin.end());
  L.query_segments = append(query_list.begin(), query_list.end());
  L.key_tile_begin = append(key_begin.begin(), key_begin.end());
  L.key_segments = append(key_list.begin(), key_list.end());
  groups.kernel_plan = at::tensor(packed, at::TensorOptions().dtype(at::kInt)).to(device);
}

// The pair groups of the plan's index maps (reads them on the host; checks the class ranges).
std::shared_ptr<const PairGroups> build_pair_groups(const AttentionInputs& in, const AttentionPlan& plan) {
  auto built = std::make_shared<PairGroups>();
  PairGroups& groups = *built;
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
  groups.group_begin.push_back(0);
  for (int64_t g = 0; g < num_keys; ++g) {
    if (!count[g]) continue;
    slot[g] = groups.num_groups();
    groups.group_begin.push_back(groups.group_begin.back() + count[g]);
  }
  const int64_t G = groups.num_groups(), P = groups.group_begin.back();
  groups.pair_i.resize(P);
  groups.pair_j.resize(P);
  for (auto& c : groups.group_class) c.assign(G, -1);
  std::vector<int64_t> fill(groups.group_begin.begin(), groups.group_begin.end() - 1);
  std::vector<char> q_class_used(plan.relative[kQ] ? in.table[kQ]->size(0) : 0, 0);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      if (!unmasked(i, j)) continue;
      const int64_t g = slot[gp[i * N + j]];
      const int64_t at = fill[g]++;
      groups.pair_i[at] = i;
      groups.pair_j[at] = j;
      for (int role = 0; role < 3; ++role) {
        if (!plan.relative[role]) continue;
        const int64_t cls = role == kQ ? qp[i * N + j] : kp[i * N + j];
        int64_t& mine = groups.group_class[role][g];
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
  const auto on_device = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(in.key_index.device());
  };
  groups.pair_i_on_device = on_device(groups.pair_i);
  groups.pair_j_on_device = on_device(groups.pair_j);
  build_kernel_plan(groups, N, in.key_index.device());
  return built;
}

// Pair groups by index maps: an entry holds its index tensors (so no other tensor can take their
// addresses while cached) and their versions (an in-place change builds them again).
std::shared_ptr<const PairGroups> cached_pair_groups(const AttentionInputs& in, const AttentionPlan& plan) {
  if (in.key_index.is_inference() || in.query_index.is_inference()) return build_pair_groups(in, plan);
  struct Entry {
    at::Tensor key_index, query_index;
    int64_t key_version, query_version;
    bool causal;
    std::array<int64_t, 3> table_rows;  // -1: the role is not relative
    std::shared_ptr<const PairGroups> groups;
  };
  static std::mutex mutex;
  static std::list<Entry> entries;
  std::array<int64_t, 3> rows{};
  for (int r = 0; r < 3; ++r) rows[r] = plan.relative[r] ? in.table[r]->size(0) : -1;
  std::lock_guard<std::mutex> lock(mutex);
  for (auto it = entries.begin(); it != entries.end(); ++it) {
    if (it->key_index.is_same(in.key_index) && it->query_index.is_same(in.query_index) &&
        it->key_version == in.key_index._version() && it->query_version == in.query_index._version() &&
        it->causal == in.causal && it->table_rows == rows) {
      entries.splice(entries.begin(), entries, it);
      return entries.front().groups;
    }
  }
  entries.push_front({in.key_index, in.query_index, in.key_index._version(), in.query_index._version(), in.causal,
                      rows, build_pair_groups(in, plan)});
  if (entries.size() > 32) entries.pop_back();
  return entries.front().groups;
}

}  // namespace

AttentionPlan prepare_attention(const AttentionInputs& in) {
  AttentionPlan plan;
  TORCH_CHECK_VALUE(in.heads >= 1, kOp, "heads must be >= 1, got ", in.heads);
  plan.H = in.heads;
  const at::Tensor& ref = reference_tensor(in);
  const auto dt = ref.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, kOp,
                   "inputs must have dtype float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK_VALUE(ref.dim() == 3, kOp, "inputs must be 3-D tensors (B, N, ...), got shape ", shape_str(ref));
  plan.B = ref.size(0);
  plan.N = ref.size(1);
  for (int role = 0; role < 3; ++role) {
    check_role(in, role, ref, plan);
    plan.relative[role] = in.table[role].has_value();
  }
  TORCH_CHECK_VALUE(plan.relative[kQ] || plan.relative[kK] || plan.relative[kV], kOp,
                    "at least one of q_table, k_table, v_table must be given");
  TORCH_CHECK_VALUE(plan.head_dim(kQ) == plan.head_dim(kK), kOp,
                    "q and k must have the same width per head (shared + relative), got ", plan.head_dim(kQ),
                    " and ", plan.head_dim(kK));
  for (const auto* pair : {&in.key_index, &in.query_index}) {
    const char* name = pair == &in.key_index ? "key_index" : "query_index";
    TORCH_CHECK_VALUE(pair->dim() == 2 && pair->size(0) == plan.N && pair->size(1) == plan.N, kOp,
                      name, " must have shape (N, N) with N == ", plan.N, ", got ", shape_str(*pair));
    TORCH_CHECK_TYPE(pair->scalar_type() == at::kLong || pair->scalar_type() == at::kInt, kOp, name,
                     " must have dtype int64 or int32, got ", pair->scalar_type());
    TORCH_CHECK_VALUE(pair->device() == ref.device(), kOp, name, " must be on the same device as the other inputs (",
                      ref.device(), "), got ", pair->device());
  }
  plan.groups = cached_pair_groups(in, plan);
  return plan;
}

}  // namespace translution_ext

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def(
      "translution_attention(Tensor? q, Tensor? k, Tensor? v, Tensor? q_source, Tensor? k_source, "
      "Tensor? v_source, Tensor? q_table, Tensor? k_table, Tensor? v_table, Tensor key_index, "
      "Tensor query_index, int heads, float scale, bool causal) -> (Tensor, Tensor)");
  // Returns the gradients of q, k, v, the three sources and the three tables, in that
  // order; an empty tensor for an input that was not given.
  m.def(
      "translution_attention_backward(Tensor grad_out, Tensor? q, Tensor? k, Tensor? v, Tensor? q_source, "
      "Tensor? k_source, Tensor? v_source, Tensor? q_table, Tensor? k_table, Tensor? v_table, "
      "Tensor key_index, Tensor query_index, Tensor out, Tensor lse, int heads, float scale, bool causal) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
