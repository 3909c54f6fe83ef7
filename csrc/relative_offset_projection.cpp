// Op schemas, device-independent argument checks and the pair plan.
#include "relative_offset_projection.h"

#include <torch/library.h>

#include <list>
#include <mutex>

namespace translution_ext {

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::Tensor exclusive_cumsum(const at::Tensor& counts) {
  return at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});
}

ProjectionSide parse_side(c10::string_view side) {
  if (side == "key") return ProjectionSide::Key;
  if (side == "query") return ProjectionSide::Query;
  TORCH_CHECK_VALUE(false, "relative_offset_projection: side must be 'key' or 'query', got '",
              std::string(side), "'");
}

constexpr const char* kOp = "relative_offset_projection: ";

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, kOp, name, " must have the same dtype as ",
                   "the other floating-point inputs (", expected, "), got ", t.scalar_type());
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                  const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), kOp, name, " must be on the same device as ",
                    ref_name, " (", ref.device(), "), got ", t.device());
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), kOp, name,
                   " must have dtype float16, bfloat16, float32 or float64, got ",
                   t.scalar_type());
}

void check_index(const at::Tensor& index, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(index.dim() == 2, kOp, "index must be a 2-D tensor (Nq, Nk), got shape ",
                    shape_str(index));
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt, kOp,
                   "index must have dtype int64 or int32, got ", index.scalar_type());
  check_device(index, "index", ref, ref_name);
}

// x: (B, N, C) with N matching the index's source side.
void check_x(const at::Tensor& x, const at::Tensor& index, ProjectionSide side) {
  TORCH_CHECK_VALUE(x.dim() == 3, kOp, "x must be a 3-D tensor (B, N, C), got shape ",
                    shape_str(x));
  const bool key = side == ProjectionSide::Key;
  TORCH_CHECK_VALUE(num_source_tokens(index, side) == x.size(1), kOp,
                    "index must have shape (Nq, Nk) with ", key ? "Nk" : "Nq",
                    " == x.size(1) == ", x.size(1), " for side='", key ? "key" : "query",
                    "', got ", shape_str(index));
}

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() == 3, kOp, "weight must be a 3-D tensor (R, C, D), got shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(weight.size(0) > 0, kOp,
                    "weight must have at least one offset class (R > 0), got shape ",
                    shape_str(weight));
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& index) {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(1) == index.size(0) &&
                        grad_out.size(2) == index.size(1),
                    kOp, "grad_out must be a 4-D tensor (B, Nq, Nk, D) with (Nq, Nk) == (",
                    index.size(0), ", ", index.size(1), "), got shape ", shape_str(grad_out));
}

void check_forward_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& index,
                        ProjectionSide side) {
  check_float(x, "x");
  check_dtype(weight, "weight", x.scalar_type());
  check_device(weight, "weight", x, "x");
  check_index(index, x, "x");
  check_weight(weight);
  check_x(x, index, side);
  TORCH_CHECK_VALUE(weight.size(1) == x.size(2), kOp,
                    "weight must have shape (R, C, D) with C == x.size(-1) == ", x.size(2),
                    ", got ", shape_str(weight));
}

void check_grad_x_args(const at::Tensor& grad_out, const at::Tensor& weight,
                       const at::Tensor& index, ProjectionSide side) {
  check_float(grad_out, "grad_out");
  check_dtype(weight, "weight", grad_out.scalar_type());
  check_device(weight, "weight", grad_out, "grad_out");
  check_index(index, grad_out, "grad_out");
  check_weight(weight);
  check_grad_out(grad_out, index);
  TORCH_CHECK_VALUE(grad_out.size(3) == weight.size(2), kOp,
                    "grad_out must have D == weight.size(2) == ", weight.size(2), ", got shape ",
                    shape_str(grad_out));
}

void check_grad_weight_args(const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& index, ProjectionSide side, int64_t num_classes) {
  check_float(grad_out, "grad_out");
  check_dtype(x, "x", grad_out.scalar_type());
  check_device(x, "x", grad_out, "grad_out");
  check_index(index, grad_out, "grad_out");
  check_x(x, index, side);
  check_grad_out(grad_out, index);
  TORCH_CHECK_VALUE(grad_out.size(0) == x.size(0), kOp,
                    "grad_out must have B == x.size(0) == ", x.size(0), ", got shape ",
                    shape_str(grad_out));
  TORCH_CHECK_VALUE(num_classes > 0, kOp, "num_classes must be positive, got ", num_classes);
}

void check_index_range(const at::Tensor& index, int64_t num_classes) {
  if (index.numel() == 0) return;
  auto [lo, hi] = at::aminmax(index);
  const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
  TORCH_CHECK_VALUE(lo_v >= 0 && hi_v < num_classes,
              "relative_offset_projection: index values must lie in [0, R) with R = "
              "weight.size(0) == ",
              num_classes, ", got min ", lo_v, " and max ", hi_v);
}

// Validates the index range and (src_block >= 0) returns the pair plan, once per index map.
PairPlan checked_plan(const at::Tensor& index, int64_t num_classes, ProjectionSide side, int64_t src_block);

Geometry make_geometry(const at::Tensor& index, ProjectionSide side, int64_t B, int64_t C,
                       int64_t D, int64_t R) {
  return Geometry{B, num_source_tokens(index, side), C, D, index.size(0), index.size(1), R,
                  side == ProjectionSide::Key};
}

}  // namespace

Problem prepare_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& index,
                        c10::string_view side_name) {
  const ProjectionSide side = parse_side(side_name);
  check_forward_args(x, weight, index, side);
  checked_plan(index, weight.size(0), side, /*src_block=*/-1);  // validates the range once
  const Geometry g =
      make_geometry(index, side, x.size(0), x.size(2), weight.size(2), weight.size(0));
  at::Tensor out = at::empty({g.B, g.Nq, g.Nk, g.D}, x.options());
  if (out.numel() > 0 && g.C == 0) out.zero_();
  return Problem{side, g, out, out.numel() == 0 || g.C == 0};
}

Problem prepare_grad_x(const at::Tensor& grad_out, const at::Tensor& weight,
                       const at::Tensor& index, c10::string_view side_name) {
  const ProjectionSide side = parse_side(side_name);
  check_grad_x_args(grad_out, weight, index, side);
  checked_plan(index, weight.size(0), side, /*src_block=*/-1);
  const Geometry g = make_geometry(index, side, grad_out.size(0), weight.size(1),
                                   weight.size(2), weight.size(0));
  at::Tensor grad_x = at::zeros({g.B, g.Ns, g.C}, grad_out.options());
  return Problem{side, g, grad_x, grad_out.numel() == 0 || grad_x.numel() == 0};
}

Problem prepare_grad_weight(const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& index, c10::string_view side_name,
                            int64_t num_classes) {
  const ProjectionSide side = parse_side(side_name);
  check_grad_weight_args(grad_out, x, index, side, num_classes);
  checked_plan(index, num_classes, side, /*src_block=*/-1);
  const Geometry g =
      make_geometry(index, side, x.size(0), x.size(2), grad_out.size(3), num_classes);
  at::Tensor grad_weight = at::zeros({g.R, g.C, g.D}, grad_out.options());
  return Problem{side, g, grad_weight, grad_out.numel() == 0 || grad_weight.numel() == 0};
}

namespace {

PairPlan make_pair_plan(const at::Tensor& index, int64_t num_classes, ProjectionSide side, int64_t src_block) {
  const int64_t nq = index.size(0), nk = index.size(1);
  const int64_t nsrc = num_source_tokens(index, side);
  PairPlan plan;
  plan.pair_class = index.reshape({-1}).to(at::kLong).contiguous();
  const at::Tensor pair = at::arange(nq * nk, plan.pair_class.options());
  const at::Tensor src = side == ProjectionSide::Key ? pair.remainder(nk)
                                                     : pair.div(nk, "floor");
  plan.by_class = at::argsort(plan.pair_class, /*stable=*/true);
  plan.class_offsets =
      exclusive_cumsum(at::bincount(plan.pair_class, /*weights=*/{}, num_classes));
  if (src_block <= 0) return plan;  // the caller needs only the class grouping
  const at::Tensor block = src.div(src_block, "floor");
  plan.by_src = at::argsort((block * num_classes + plan.pair_class) * nsrc + src, /*stable=*/true);
  plan.src_offsets = exclusive_cumsum(at::bincount(src, /*weights=*/{}, nsrc));
  return plan;
}

// Index maps are validated and planned once per (tensor, version): a module's index maps do not
// change between calls, so after the first call nothing reads index values on the host (on CUDA:
// no device synchronisation per call, which CUDA graphs need).  An entry holds its index tensor,
// so no other tensor can take its address while cached; the version counter catches in-place
// changes.
class PlanCache {
 public:
  // Validates the index range (once), then returns the plan (src_block < 0: none).
  PairPlan get(const at::Tensor& index, int64_t num_classes, ProjectionSide side, int64_t src_block) {
    if (index.is_inference()) {  // no version counter: nothing can be cached
      check_index_range(index, num_classes);
      return src_block >= 0 ? make_pair_plan(index, num_classes, side, src_block) : PairPlan{};
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      const bool same_index = it->index.is_same(index) && it->version == index._version() &&
                              it->num_classes == num_classes;
      if (same_index && src_block < 0) return {};  // validated before
      if (same_index && it->side == side && it->src_block == src_block) {
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        return entries_.front().plan;
      }
    }
    check_index_range(index, num_classes);
    Entry e{index, index._version(), num_classes, side, src_block, {}};
    if (src_block >= 0) e.plan = make_pair_plan(index, num_classes, side, src_block);
    entries_.push_front(std::move(e));
    if (entries_.size() > kCapacity) entries_.pop_back();
    return entries_.front().plan;
  }

 private:
  struct Entry {
    at::Tensor index;
    int64_t version;
    int64_t num_classes;
    ProjectionSide side;
    int64_t src_block;
    PairPlan plan;
  };
  static constexpr size_t kCapacity = 64;
  std::mutex mutex_;
  std::list<Entry> entries_;
};

PairPlan checked_plan(const at::Tensor& index, int64_t num_classes, ProjectionSide side, int64_t src_block) {
  static PlanCache cache;
  return cache.get(index, num_classes, side, src_block);
}

}  // namespace

PairPlan build_pair_plan(const at::Tensor& index, int64_t num_classes, ProjectionSide side, int64_t src_block) {
  return checked_plan(index, num_classes, side, src_block);
}

}  // namespace translution_ext

TORCH_LIBRARY_FRAGMENT(translution_ext, m) {
  m.def(
      "relative_offset_projection(Tensor x, Tensor weight, Tensor index, str side=\"key\") "
      "-> Tensor");
  m.def(
      "relative_offset_projection_grad_x(Tensor grad_out, Tensor weight, Tensor index, "
      "str side) -> Tensor");
  m.def(
      "relative_offset_projection_grad_weight(Tensor grad_out, Tensor x, Tensor index, "
      "str side, int num_classes) -> Tensor");
}
