// C++ test of the relative-offset projection through the dispatcher, against
// plain loops: forward, both gradients, both sides, and the argument errors.
#include "build_info.h"
#include "relative_offset_projection.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <typename Exception>
void expect_throw(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  try {
    call();
  } catch (const Exception& e) {
    const bool ok = std::string(e.what()).find(needle) != std::string::npos;
    if (!ok) std::printf("     message was: %s\n", e.what());
    expect(ok, what);
    return;
  } catch (const std::exception& e) {
    std::printf("     wrong exception type: %s\n", e.what());
  }
  expect(false, what);
}

using Forward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
using GradX = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
using GradW = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void check_side(const std::string& side) {
  const bool key = side == "key";
  const int64_t B = 2, N = 5, C = 6, D = 4, R = 9;
  at::manual_seed(0);
  const at::Tensor x = at::randn({B, N, C}, at::kDouble);
  const at::Tensor w = at::randn({R, C, D}, at::kDouble);
  const at::Tensor index = at::randint(0, R, {N, N}, at::kLong);
  const at::Tensor grad = at::randn({B, N, N, D}, at::kDouble);

  at::Tensor out_ref = at::zeros({B, N, N, D}, at::kDouble);
  at::Tensor gx_ref = at::zeros_like(x), gw_ref = at::zeros_like(w);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const int64_t r = index[i][j].item<int64_t>(), s = key ? j : i;
        out_ref[b][i][j] = at::matmul(x[b][s], w[r]);
        gx_ref[b][s] += at::matmul(w[r], grad[b][i][j]);
        gw_ref[r] += at::outer(x[b][s], grad[b][i][j]);
      }
  const at::Tensor out = op<Forward>("translution_ext::relative_offset_projection").call(x, w, index, side);
  const at::Tensor gx = op<GradX>("translution_ext::relative_offset_projection_grad_x").call(grad, w, index, side);
  const at::Tensor gw = op<GradW>("translution_ext::relative_offset_projection_grad_weight").call(grad, x, index, side, R);
  expect(at::allclose(out, out_ref, 1e-10, 1e-10), "forward matches loops, side=" + side);
  expect(at::allclose(gx, gx_ref, 1e-10, 1e-10), "grad_x matches loops, side=" + side);
  expect(at::allclose(gw, gw_ref, 1e-10, 1e-10), "grad_weight matches loops, side=" + side);
}

void check_errors() {
  auto forward = op<Forward>("translution_ext::relative_offset_projection");
  const at::Tensor x = at::randn({2, 5, 6}), w = at::randn({9, 6, 4});
  const at::Tensor index = at::zeros({5, 5}, at::kLong);
  expect_throw<c10::ValueError>([&] { forward.call(x, at::randn({9, 7, 4}), index, "key"); },
                                "C == x.size(-1) == 6", "mismatched C is a ValueError naming C");
  expect_throw<c10::ValueError>([&] { forward.call(x, w, index + 9, "key"); },
                                "index values must lie in [0, R)", "index out of range");
  expect_throw<c10::TypeError>([&] { forward.call(x, w, index.to(at::kFloat), "key"); },
                               "index must have dtype int64 or int32", "index dtype");
  expect_throw<c10::ValueError>([&] { forward.call(x, w, index, "value"); },
                                "side must be 'key' or 'query'", "bad side");
}

}  // namespace

int main() {
  std::printf("%s\n", translution_ext::build_info_json().c_str());
  check_side("key");
  check_side("query");
  check_errors();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
