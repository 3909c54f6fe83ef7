// The pixel shifts of an X-volution kernel launch, passed by value: any number of shifts goes to
// the kernels in chunks of kShiftsPerLaunch (kernel parameters are limited to 4 KB).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace translution_ext {

constexpr int kShiftsPerLaunch = 64;

// Shifts [first, first + count) of the op's list.
struct Shifts {
  int64_t first, count;
  int64_t d[2 * kShiftsPerLaunch];
};

inline std::vector<Shifts> shift_chunks(const std::vector<int64_t>& flat) {
  std::vector<Shifts> chunks;
  const int64_t total = static_cast<int64_t>(flat.size() / 2);
  for (int64_t first = 0; first < total; first += kShiftsPerLaunch) {
    Shifts sh{first, std::min<int64_t>(kShiftsPerLaunch, total - first), {}};
    for (int64_t i = 0; i < 2 * sh.count; ++i) sh.d[i] = flat[2 * first + i];
    chunks.push_back(sh);
  }
  return chunks;
}

}  // namespace translution_ext
