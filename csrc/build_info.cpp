// What this library was compiled with, reported as JSON by the build_info op.
#include "build_info.h"

#include <torch/library.h>

#include <sstream>
#include <string>

#ifndef TRANSLUTION_EXT_TORCH_VERSION
#define TRANSLUTION_EXT_TORCH_VERSION "unknown"
#endif
#ifndef TRANSLUTION_EXT_CUDA_ARCHS
#define TRANSLUTION_EXT_CUDA_ARCHS ""
#endif

namespace translution_ext {

#ifdef TRANSLUTION_EXT_WITH_CUDA
int cuda_runtime_version();  // defined in cuda/cuda_info.cu
#endif

std::string build_info_json() {
  std::ostringstream s;
  s << "{\"torch_version\": \"" << TRANSLUTION_EXT_TORCH_VERSION << "\", \"cpu\": true, ";
#ifdef TRANSLUTION_EXT_WITH_CUDA
  const int v = cuda_runtime_version();
  s << "\"cuda\": true, \"cuda_version\": \"" << v / 1000 << "." << (v % 1000) / 10 << "\", ";
#else
  s << "\"cuda\": false, \"cuda_version\": null, ";
#endif
  s << "\"cuda_archs\": \"" << TRANSLUTION_EXT_CUDA_ARCHS << "\", ";
  // Whether the CPU kernels' at::parallel_for (an inline OpenMP region) can use more than one thread.
#ifdef _OPENMP
  s << "\"cpu_parallel\": true}";
#else
  s << "\"cpu_parallel\": false}";
#endif
  return s.str();
}

}  // namespace translution_ext

TORCH_LIBRARY_FRAGMENT(translution_ext, m) { m.def("build_info() -> str", &translution_ext::build_info_json); }
