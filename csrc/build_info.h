// What this library was compiled with.
#pragma once

#include <string>

namespace translution_ext {

// JSON: torch version built against, CPU/CUDA kernels, CUDA version and architectures.
std::string build_info_json();

}  // namespace translution_ext
