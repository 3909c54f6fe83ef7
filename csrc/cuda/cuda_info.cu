// CUDA runtime version this library was compiled against (for build_info).
#include <cuda_runtime_api.h>

namespace translution_ext {

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace translution_ext
