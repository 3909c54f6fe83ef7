// Fused Translution attention on CPU (translution_attention_{forward,backward}_cpu.cpp, shared
// pieces in translution_attention_cpu.h), whose work items run on the thread pool.
#include <torch/library.h>

#include "../translution_attention.h"

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("translution_attention", &translution_ext::attention_forward_cpu);
  m.impl("translution_attention_backward", &translution_ext::attention_backward_cpu);
}
