// CPU reference of the SwiGLU activation, elementwise.
#include "kernels/swiglu.h"

#include <initializer_list>
#include <utility>

#include "kernels/device.h"
#include "kernels/op_checks.h"
#include "kernels/vector_math.h"

namespace cst {

// With the vectorised exp (kernels/vector_math.h) the loops below run several lanes at once.
static float sigmoid(float x) { return 1.0f / (1.0f + vector_exp(-x)); }

// All tensors share the first one's (N, F) shape and device; f32 on the CPU.
static void swiglu_check(const char* op,
                         std::initializer_list<std::pair<const Tensor*, const char*>> tensors) {
  const Tensor& first = *tensors.begin()->first;
  check_rank(first, 2, op, tensors.begin()->second);
  for (auto [t, name] : tensors) {
    common_device(op, first, *t);
    check_dims(*t, {first.shape[0], first.shape[1]}, op, name);
    if (t->device == Device::cpu) check_dtype(*t, DType::f32, op, name);
  }
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  swiglu_check("swiglu_forward", {{&out, "out"}, {&gate, "gate"}, {&up, "up"}});
  if (out.device == Device::cuda) return CST_ON_CUDA(cuda::swiglu_forward(out, gate, up));
  const float* gate_data = gate.f32();
  const float* up_data = up.f32();
  float* out_data = out.f32();
  int64_t count = out.numel();
#pragma omp parallel for simd
  for (int64_t i = 0; i < count; ++i) {
    float g = gate_data[i];
    out_data[i] = g * sigmoid(g) * up_data[i];
  }
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  swiglu_check("swiglu_backward",
               {{&dgate, "dgate"}, {&dup, "dup"}, {&dout, "dout"}, {&gate, "gate"}, {&up, "up"}});
  if (dgate.device == Device::cuda)
    return CST_ON_CUDA(cuda::swiglu_backward(dgate, dup, dout, gate, up));
  const float* dout_data = dout.f32();
  const float* gate_data = gate.f32();
  const float* up_data = up.f32();
  float* dgate_data = dgate.f32();
  float* dup_data = dup.f32();
  int64_t count = dout.numel();
#pragma omp parallel for simd
  for (int64_t i = 0; i < count; ++i) {
    float g = gate_data[i], s = sigmoid(g);
    // Read everything before writing: dgate or dup may alias gate or up.
    float silu_derivative = s * (1.0f + g * (1.0f - s));
    float d = dout_data[i], u = up_data[i];
    dgate_data[i] = d * u * silu_derivative;
    dup_data[i] = d * g * s;
  }
}

}  // namespace cst
