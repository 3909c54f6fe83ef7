// Emulation build: the CUDA runtime's types come from cuda_emulator.h.
#pragma once
#include "cuda_emulator.h"
