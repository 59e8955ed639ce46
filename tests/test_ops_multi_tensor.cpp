// The optimizer's multi-tensor forms (kernels/adamw.h): on the CPU exactly the per-tensor op for
// every tensor; on the GPU (one launch for all tensors) against that CPU result.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/device.h"

namespace cst {
namespace {

struct State {
  std::vector<OwnedTensor> param, grad, m, v;
};

// Tensors of odd sizes (no multiple of any vector width) filled from a fixed formula.
State make_state(Device device) {
  State state;
  const std::vector<int64_t> sizes = {7, 130, 1, 1025, 64};
  for (size_t t = 0; t < sizes.size(); ++t) {
    std::vector<float> values(size_t(sizes[t]));
    for (auto* list : {&state.param, &state.grad, &state.m, &state.v}) {
      for (size_t i = 0; i < values.size(); ++i)
        values[i] = std::sin(float(i * 7 + t * 13 + list->size() * 3 + (list == &state.v ? 100 : 0))) *
                    (list == &state.v ? 0.01f : 0.5f);
      if (list == &state.v)
        for (float& value : values) value = std::abs(value);  // second moments are non-negative
      list->emplace_back(std::vector<int64_t>{sizes[t]}, DType::f32, device);
      copy_tensor(list->back().view, make_view(values.data(), {sizes[t]}, DType::f32, Device::cpu));
    }
  }
  return state;
}

std::vector<AdamWTensor> views(const State& state) {
  std::vector<AdamWTensor> tensors;
  for (size_t t = 0; t < state.param.size(); ++t)
    tensors.push_back({state.param[t].view, state.grad[t].view, state.m[t].view, state.v[t].view});
  return tensors;
}

const AdamWConfig kConfig{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};

TEST(OpsMultiTensor, AdamWAllEqualsThePerTensorStep) {
  State together = make_state(Device::cpu), one_by_one = make_state(Device::cpu);
  for (int64_t step = 1; step <= 3; ++step) {
    adamw_update_all(views(together), kConfig, 1e-3f, step, 0.5f);
    for (const AdamWTensor& t : views(one_by_one)) adamw_update(t.param, t.grad, t.m, t.v, kConfig, 1e-3f, step, 0.5f);
  }
  for (size_t t = 0; t < together.param.size(); ++t) {
    EXPECT_EQ(to_host_f32(together.param[t].view), to_host_f32(one_by_one.param[t].view)) << "tensor " << t;
    EXPECT_EQ(to_host_f32(together.v[t].view), to_host_f32(one_by_one.v[t].view)) << "tensor " << t;
  }
  std::vector<Tensor> gradients;
  double expected = 0;
  for (const OwnedTensor& grad : together.grad) {
    gradients.push_back(grad.view);
    expected += sum_of_squares(grad.view);
  }
  EXPECT_DOUBLE_EQ(sum_of_squares_all(gradients), expected);
}

// f32 throughout on both sides; the GPU may contract multiply-adds differently, so a few ulps.
TEST(CudaMultiTensor, AdamWAllAndNormMatchTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: the multi-tensor kernels are checked by tools/gpu_check.sh";
  State cpu = make_state(Device::cpu), gpu = make_state(Device::cuda);
  for (int64_t step = 1; step <= 3; ++step) {
    adamw_update_all(views(cpu), kConfig, 1e-3f, step, 0.5f);
    adamw_update_all(views(gpu), kConfig, 1e-3f, step, 0.5f);
  }
  for (size_t t = 0; t < cpu.param.size(); ++t) {
    std::vector<float> expected = to_host_f32(cpu.param[t].view), actual = to_host_f32(gpu.param[t].view);
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-6) << t << ", " << i;
  }
  std::vector<Tensor> cpu_grads, gpu_grads;
  for (size_t t = 0; t < cpu.grad.size(); ++t) {
    cpu_grads.push_back(cpu.grad[t].view);
    gpu_grads.push_back(gpu.grad[t].view);
  }
  const double expected = sum_of_squares_all(cpu_grads);
  EXPECT_NEAR(sum_of_squares_all(gpu_grads), expected, 1e-12 * expected);
  EXPECT_EQ(sum_of_squares_all(gpu_grads), sum_of_squares_all(gpu_grads)) << "reproducible";
}

}  // namespace
}  // namespace cst
