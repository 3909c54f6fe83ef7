// Fused Translution attention on CPU: the ATen-composed implementation
// (translution_attention_aten.cpp), whose work items run on the thread pool.
#include <torch/library.h>

#include "../translution_attention.h"

TORCH_LIBRARY_IMPL(translution_ext, CPU, m) {
  m.impl("translution_attention", &translution_ext::attention_forward_aten);
  m.impl("translution_attention_backward", &translution_ext::attention_backward_aten);
}
