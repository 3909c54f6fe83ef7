// Helpers shared by the argument checks of every op.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace translution_ext {

// "(2, 3, 4)": a tensor's shape for error messages.
std::string shape_str(const at::Tensor& t);

}  // namespace translution_ext
