// The one way this library runs CPU work items on torch's thread pool.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <cstdint>

namespace translution_ext {

// at::parallel_for whose worker threads see the calling thread's thread-local state.  OpenMP
// workers start with the defaults: grad mode on, no dispatch keys excluded, autocast off.  An ATen
// op called there on an input that requires grad would record autograd history (or refuse an out=
// argument) although the caller runs below autograd, and would ignore the caller's autocast guard.
template <typename F>
void parallel_for_items(int64_t begin, int64_t end, int64_t grain, const F& fn) {
  const at::ThreadLocalState caller;
  at::parallel_for(begin, end, grain, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard guard(caller);
    fn(first, last);
  });
}

}  // namespace translution_ext
