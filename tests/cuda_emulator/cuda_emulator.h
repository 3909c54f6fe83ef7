// A small CUDA emulator: runs the project's .cu kernel sources, compiled as host C++, on the CPU.
//
// One fiber per CUDA thread; the blocks of a grid run one after another on the calling
// thread.  `__shared__` variables become static storage that registers itself with the
// emulator (the build step rewrite_shared.py rewrites each declaration); the emulator fills it
// with 0xFF bytes (NaN for every floating-point type) before each block, so a read of shared
// memory that no thread of the block wrote shows up as NaN, and checks the kernel's total
// against the 48 KB of static shared memory a block may use.  `extern __shared__` (dynamic
// shared memory) is a heap block of exactly the launch's bytes, poisoned the same way; more
// than 48 KB needs cudaFuncSetAttribute first, as on a GPU, and static + dynamic <= 227 KB.  `__syncthreads()` is a
// checked barrier: threads waiting at different barriers, or threads that returned while
// others wait, are errors that name the kernel, the block and the barrier's file:line.
// The order in which threads (and blocks) run between barriers is a schedule: forward,
// reverse or seeded random (CUDA_EMULATOR_SCHEDULE=forward|reverse|random[:seed]); a kernel
// whose result depends on it has a race.
//
// This header is forced into every emulated translation unit (-include); the shim/ folder
// stands in for the CUDA and c10/ATen CUDA headers.  Nothing here is compiled into the
// package's own library.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
// The attributes the kernels use, with the values of an sm_90 device (H100).
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
#define CUDART_VERSION 13000

// The built-in variables of the running fiber (set by the scheduler before each switch).
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() ::cuda_emulator::syncthreads(__FILE__, __LINE__)

// Device math that CUDA provides for float and double alike.
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }

namespace cuda_emulator {

// Where a kernel was launched: its name and the launching call's file:line.
struct LaunchSite {
  std::string_view kernel;
  const char* file;
  unsigned line;
};

// Called where a `__shared__` variable is declared (see rewrite_shared.py).
void register_shared(const void* address, size_t bytes, const char* name, const char* file, int line);

// The barrier: switches to the next fiber; checked by the scheduler.
void syncthreads(const char* file, int line);

// Runs `thread_body(context)` once per thread of every block; throws c10::Error (RuntimeError
// in Python) naming the kernel, block and file:line on any launch or barrier error.
void run_grid(const LaunchSite& site, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
              void (*thread_body)(void*), void* context);

// The dynamic shared memory of the running block (`extern __shared__`, see rewrite_shared.py):
// exactly the launch's bytes, poisoned like static shared memory before every block.
void* dynamic_shared_memory(const char* name, const char* file, int line);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): as on a GPU,
// a launch with more than 48 KB of dynamic shared memory needs it first.
void set_max_dynamic_shared(const void* kernel, int bytes);

// The largest shared memory a block may have (static + dynamic) once opted in: sm_90's 227 KB.
constexpr size_t kMaxSharedOptin = 227 * 1024;

// Counts launches (tests assert how many launches an op call makes).
int64_t launch_count();

// Overrides CUDA_EMULATOR_SCHEDULE for this OS thread ("" goes back to the variable).
void set_schedule(const std::string& schedule);

// Checks the rules of a WMMA load/store: 256-bit aligned pointer, ldm a multiple of 16 bytes.
void check_wmma_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what);

// The lane of the running thread within its warp (threads are numbered x-fastest).
unsigned lane_id();

template <auto kernel>
constexpr std::string_view kernel_name() {
  constexpr std::string_view f = __PRETTY_FUNCTION__;  // "... [with auto kernel = NAME; ...]"
  constexpr auto start = f.find("kernel = ") + 9;
  return f.substr(start, std::min(f.find(';', start), f.rfind(']')) - start);
}

template <auto kernel, typename... Args>
void launch_with(const LaunchSite& site, dim3 grid, dim3 block, size_t smem, Args&... args) {
  auto body = [](void* ctx) {
    // Each thread gets its own copies of the arguments, as kernel parameters are per thread.
    std::apply([](auto&... a) { kernel(a...); }, *static_cast<std::tuple<Args&...>*>(ctx));
  };
  std::tuple<Args&...> refs(args...);
  run_grid(site, reinterpret_cast<const void*>(kernel), grid, block, smem, body, &refs);
}

}  // namespace cuda_emulator

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize)
    ::cuda_emulator::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  *value = attribute == cudaDevAttrMaxSharedMemoryPerBlockOptin ? int(::cuda_emulator::kMaxSharedOptin) : 132;
  return cudaSuccess;
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

