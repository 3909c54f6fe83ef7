// Emulation build: launch errors are raised by the emulator at the launch itself.
#pragma once
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) (void)(expr)
