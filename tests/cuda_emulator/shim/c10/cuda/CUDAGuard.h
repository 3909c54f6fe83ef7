// Emulation build: the emulated GPU is the CPU.  Like the real guard, which refuses a device
// that is not CUDA, this one refuses any device but the CPU, so host code that builds its
// guard before checking devices fails here as it would on a GPU.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <optional>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "CUDAGuardImpl initialized with non-CUDA DeviceType: ", device.type(),
                " (emulated: the emulated GPU is the CPU)");
  }
};

struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(std::optional<c10::Device> device) {
    if (device) CUDAGuard guard(*device);
  }
};

}  // namespace c10::cuda
