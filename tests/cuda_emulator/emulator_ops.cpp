// Controls of the emulator for the tests: torch.ops.cuda_emulator.*
#include <torch/library.h>

#include "cuda_emulator.h"

namespace {

void set_schedule_op(c10::string_view schedule) { cuda_emulator::set_schedule(std::string(schedule)); }

int64_t launch_count_op() { return cuda_emulator::launch_count(); }

bool sanitized_op() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(cuda_emulator, m) {
  m.def("set_schedule(str schedule) -> ()", &set_schedule_op);
  m.def("launch_count() -> int", &launch_count_op);
  m.def("sanitized() -> bool", &sanitized_op);
}
