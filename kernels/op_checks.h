// Argument checks shared by the ops' entry points. Every check names the op and the argument, so
// a caller's mistake reads as "rmsnorm_forward: weight: expected f32[12] on cpu, got ...".
#pragma once
#include <initializer_list>
#include <utility>

#include "kernels/tensor.h"

namespace cst {

// Every tensor argument of an op lives on the first one's device.
template <class... Rest>
Device common_device(const char* op, const Tensor& first, const Rest&... rest) {
  auto check_one = [&](const Tensor& other) {
    if (other.device != first.device)
      fail(op, ": arguments on different devices: ", first.describe(), " and ", other.describe());
  };
  (check_one(rest), ...);
  return first.device;
}

inline void check_dtype(const Tensor& t, DType dtype, const char* op, const char* what) {
  if (t.dtype != dtype)
    fail(op, ": ", what, " must be ", dtype_name(dtype), ", got ", t.describe());
}

// The CPU backend computes in f32: every floating-point argument must be f32 there.
inline void check_f32(const char* op,
                      std::initializer_list<std::pair<const Tensor*, const char*>> named_tensors) {
  for (auto [t, name] : named_tensors) check_dtype(*t, DType::f32, op, name);
}

inline void check_rank(const Tensor& t, int rank, const char* op, const char* what) {
  if (t.rank != rank) fail(op, ": ", what, " must have rank ", rank, ", got ", t.describe());
}

// Shape check with the op's name in the message.
inline void check_dims(const Tensor& t, std::initializer_list<int64_t> expected, const char* op,
                       const char* what) {
  std::string label = std::string(op) + ": " + what;
  check_shape(t, expected, label.c_str());
}

}  // namespace cst
