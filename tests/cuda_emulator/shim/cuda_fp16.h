// Emulation build: __half is c10::Half (round-to-nearest-even conversions, like the intrinsics).
#pragma once
#include <c10/util/Half.h>

using __half = c10::Half;
inline __half __float2half_rn(float f) { return c10::Half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
