// Kernel launches and the dispatch key of the CUDA kernels.
//
//   launch_kernel<kernel>(grid, block, shared_bytes, stream)(args...)
//
// is kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc.  The same sources also
// build, as host C++, into the test-only CUDA emulator (tests/cuda_emulator), which defines
// TRANSLUTION_EXT_CUDA_EMULATION: there the launch runs the kernel on the emulator's fibers,
// and the kernels register under the CPU dispatch key of the emulator's own op namespace.
#pragma once

#include <cuda_runtime.h>

#include <source_location>
#include <utility>

#ifdef TRANSLUTION_EXT_CUDA_EMULATION
#define TRANSLUTION_EXT_CUDA_KEY CPU
#else
#define TRANSLUTION_EXT_CUDA_KEY CUDA
#endif

namespace translution_ext {

template <auto kernel>
struct KernelLaunch {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  std::source_location where;

  template <typename... Args>
  void operator()(Args&&... args) const {
#ifdef TRANSLUTION_EXT_CUDA_EMULATION
    cuda_emulator::launch_with<kernel>({cuda_emulator::kernel_name<kernel>(), where.file_name(), where.line()}, grid,
                                       block, shared_bytes, args...);
#else
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
  }
};

template <auto kernel>
KernelLaunch<kernel> launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                                   std::source_location where = std::source_location::current()) {
  return {grid, block, shared_bytes, stream, where};
}

}  // namespace translution_ext
