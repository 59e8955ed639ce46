// A frozen linear layer with LoRA and dropout (model/lora_linear.h): the analytic gradients of A, B
// and x against central finite differences of the forward. The dropout mask is a pure function of
// (seed, stream, index), so the forward is deterministic and differentiable as a whole.
// Tolerance: the f32 forward differenced with step 1e-2 on a loss of order 1 gives about 1e-4
// relative noise; 2e-3 catches a missing mask, scale or transpose (errors of order 1).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/lora_linear.h"
#include "tests/golden_support.h"

namespace cst {
namespace {
using namespace testing_support;

constexpr int64_t kTokens = 5, kIn = 7, kOut = 6, kRank = 3;

struct Layer {
  OwnedTensor weight{{kOut, kIn}, DType::f32, Device::cpu};
  LoraPair lora;
  OwnedTensor x{{kTokens, kIn}, DType::f32, Device::cpu};
  Layer() {
    lora.a = OwnedTensor({kRank, kIn}, DType::f32, Device::cpu);
    lora.b = OwnedTensor({kOut, kRank}, DType::f32, Device::cpu);
    lora.grad_a = OwnedTensor({kRank, kIn}, DType::f32, Device::cpu);
    lora.grad_b = OwnedTensor({kOut, kRank}, DType::f32, Device::cpu);
    lora.compute_a = lora.a.view;
    lora.compute_b = lora.b.view;
    int k = 0;
    for (const Tensor* t : {&weight.view, &lora.a.view, &lora.b.view, &x.view})
      for (int64_t i = 0; i < t->numel(); ++i) t->f32()[i] = 0.5f * std::sin(float(++k) * 1.7f);
  }
  LoraLinear linear() const { return {weight.view, &lora, 1.5f, 0.3f, 11, 4}; }
};

// loss = sum(y * r) for a fixed r.
double loss(Layer& layer, const std::vector<float>& r) {
  Arena arena(Device::cpu, 1 << 16);
  OwnedTensor y({kTokens, kOut}, DType::f32, Device::cpu);
  lora_linear_forward(y.view, layer.x.view, layer.linear(), arena);
  double total = 0;
  for (int64_t i = 0; i < y.view.numel(); ++i) total += double(y.view.f32()[i]) * r[size_t(i)];
  return total;
}

std::vector<float> numeric_gradient(Layer& layer, const Tensor& parameter, const std::vector<float>& r) {
  std::vector<float> gradient(size_t(parameter.numel()));
  const float step = 1e-2f;
  for (int64_t i = 0; i < parameter.numel(); ++i) {
    const float saved = parameter.f32()[i];
    parameter.f32()[i] = saved + step;
    const double up = loss(layer, r);
    parameter.f32()[i] = saved - step;
    const double down = loss(layer, r);
    parameter.f32()[i] = saved;
    gradient[size_t(i)] = float((up - down) / (2 * step));
  }
  return gradient;
}

TEST(LoraLinear, DropoutGradientsMatchFiniteDifferences) {
  Layer layer;
  std::vector<float> r(size_t(kTokens * kOut));
  for (size_t i = 0; i < r.size(); ++i) r[i] = std::cos(float(i) * 0.9f);
  Arena arena(Device::cpu, 1 << 16);
  OwnedTensor y({kTokens, kOut}, DType::f32, Device::cpu), dx({kTokens, kIn}, DType::f32, Device::cpu);
  Tensor u = lora_linear_forward(y.view, layer.x.view, layer.linear(), arena);
  Tensor dy = make_view(r.data(), {kTokens, kOut}, DType::f32, Device::cpu);
  lora_linear_backward(dx.view, false, dy, layer.x.view, u, layer.linear(), arena);
  EXPECT_LE(relative_error(to_host(layer.lora.grad_a.view), numeric_gradient(layer, layer.lora.a.view, r)), 2e-3);
  EXPECT_LE(relative_error(to_host(layer.lora.grad_b.view), numeric_gradient(layer, layer.lora.b.view, r)), 2e-3);
  EXPECT_LE(relative_error(to_host(dx.view), numeric_gradient(layer, layer.x.view, r)), 2e-3);
}

}  // namespace
}  // namespace cst
