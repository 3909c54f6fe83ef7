// Emulation build: the current stream is a placeholder; kernels run synchronously on the CPU.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_emulator.h"

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream(c10::DeviceIndex = -1) { return nullptr; }
}  // namespace at::cuda
