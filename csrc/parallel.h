// The one way this library runs CPU work items on torch's thread pool.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cstdint>

namespace translution_ext {

// Below about this many multiply-adds (or element operations) the items run on the calling
// thread alone: a parallel region costs a wake-up and a barrier, microseconds on idle cores but a
// scheduler time slice when another process holds a core (small ops on 2 busy threads ran 8x
// slower than on one).
constexpr int64_t kMinParallelWork = int64_t(1) << 17;

// at::parallel_for over items of about `work_per_item` operations each, whose worker threads see
// the calling thread's thread-local state.  OpenMP workers start with the defaults: grad mode on,
// no dispatch keys excluded, autocast off.  An ATen op called there on an input that requires grad
// would record autograd history (or refuse an out= argument) although the caller runs below
// autograd, and would ignore the caller's autocast guard.
template <typename F>
void parallel_for_items(int64_t begin, int64_t end, int64_t work_per_item, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_item));
  const at::ThreadLocalState caller;
  at::parallel_for(begin, end, grain, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard guard(caller);
    fn(first, last);
  });
}

}  // namespace translution_ext
