// CPU reference of the AdamW step and of the gradient norm's sum of squares.
#include "kernels/adamw.h"

#include <cmath>
#include <utility>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

// Every tensor f32, on one device, of the parameter's size; returns that device.
static Device check_adamw_arguments(const char* op, const Tensor& param, const Tensor& grad,
                                    const Tensor& m, const Tensor& v, int64_t step) {
  Device device = common_device(op, param, grad, m, v);
  for (auto [t, name] : {std::pair{&param, "param"}, {&grad, "grad"}, {&m, "m"}, {&v, "v"}}) {
    check_dtype(*t, DType::f32, op, name);
    if (t->numel() != param.numel())
      fail(op, ": ", name, " ", t->describe(), " does not match param ", param.describe());
  }
  if (step < 1) fail(op, ": step counts from 1, got ", step);
  return device;
}

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale) {
  Device device = check_adamw_arguments("adamw_update", param, grad, m, v, step);
  if (device == Device::cuda)
    return CST_ON_CUDA(
        cuda::adamw_update(param, grad, m, v, config, learning_rate, step, grad_scale));

  // The same order of operations as torch.optim.AdamW (single-tensor path): decay the
  // parameter, update the moments, then p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
  // The bias corrections are computed in double, as torch does with Python floats.
  double bias_correction1 = 1.0 - std::pow(double(config.beta1), double(step));
  double bias_correction2 = 1.0 - std::pow(double(config.beta2), double(step));
  float step_size = float(double(learning_rate) / bias_correction1);
  float bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  float decay = 1.0f - learning_rate * config.weight_decay;
  float beta1 = config.beta1, beta2 = config.beta2, eps = config.epsilon;
  float* p = param.f32();
  const float* g_data = grad.f32();
  float* m_data = m.f32();
  float* v_data = v.f32();
  int64_t count = param.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < count; ++i) {
    float g = g_data[i] * grad_scale;
    m_data[i] = beta1 * m_data[i] + (1.0f - beta1) * g;
    v_data[i] = beta2 * v_data[i] + (1.0f - beta2) * g * g;
    float denominator = std::sqrt(v_data[i]) / bias_correction2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (m_data[i] / denominator);
  }
}

double sum_of_squares(const Tensor& t) {
  if (t.device == Device::cuda) {
    double result = 0;
    CST_ON_CUDA(result = cuda::sum_of_squares(t));
    return result;
  }
  check_dtype(t, DType::f32, "sum_of_squares", "t");
  const float* data = t.f32();
  int64_t count = t.numel();
  double sum = 0;
#pragma omp parallel for reduction(+ : sum)
  for (int64_t i = 0; i < count; ++i) sum += double(data[i]) * data[i];
  return sum;
}

void adamw_update_all(const std::vector<AdamWTensor>& tensors, const AdamWConfig& config,
                      float learning_rate, int64_t step, float grad_scale) {
  if (tensors.empty()) return;
  const Device device = tensors.front().param.device;
  for (const AdamWTensor& t : tensors)
    if (check_adamw_arguments("adamw_update_all", t.param, t.grad, t.m, t.v, step) != device)
      fail("adamw_update_all: tensors on different devices");
  if (device == Device::cuda)
    return CST_ON_CUDA(cuda::adamw_update_all(tensors, config, learning_rate, step, grad_scale));
  for (const AdamWTensor& t : tensors) adamw_update(t.param, t.grad, t.m, t.v, config, learning_rate, step, grad_scale);
}

double sum_of_squares_all(const std::vector<Tensor>& tensors) {
  if (tensors.empty()) return 0.0;
  if (tensors.front().device == Device::cuda) {
    for (const Tensor& t : tensors) {
      if (t.device != Device::cuda) fail("sum_of_squares_all: tensors on different devices");
      check_dtype(t, DType::f32, "sum_of_squares_all", "tensor");
    }
    double result = 0;
    CST_ON_CUDA(result = cuda::sum_of_squares_all(tensors));
    return result;
  }
  double total = 0;
  for (const Tensor& t : tensors) total += sum_of_squares(t);
  return total;
}

}  // namespace cst
