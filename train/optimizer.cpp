#include "train/optimizer.h"

#include <cmath>

#include "model/safetensors.h"

namespace cst {

AdamW::AdamW(std::vector<LoraAdapter::Parameter> parameters, const AdamWConfig& config)
    : parameters_(std::move(parameters)), config_(config) {
  for (const auto& parameter : parameters_) {
    std::vector<int64_t> shape(parameter.value.shape.begin(), parameter.value.shape.begin() + parameter.value.rank);
    first_moments_.emplace_back(shape, DType::f32, parameter.value.device);
    second_moments_.emplace_back(shape, DType::f32, parameter.value.device);
  }
}

double AdamW::gradient_norm() const {
  std::vector<Tensor> gradients;
  for (const auto& parameter : parameters_) gradients.push_back(parameter.grad);
  return std::sqrt(sum_of_squares_all(gradients));
}

void AdamW::step(float learning_rate, float grad_scale) {
  ++steps_taken_;
  std::vector<AdamWTensor> tensors;
  for (size_t i = 0; i < parameters_.size(); ++i)
    tensors.push_back({parameters_[i].value, parameters_[i].grad, first_moments_[i].view, second_moments_[i].view});
  adamw_update_all(tensors, config_, learning_rate, steps_taken_, grad_scale);
}

float clip_scale(double gradient_norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  return float(std::min(1.0, max_norm / (gradient_norm + 1e-6)));
}

void AdamW::save(const std::string& path) const {
  std::vector<std::vector<float>> host;
  std::vector<TensorToWrite> tensors;
  host.reserve(parameters_.size() * 2);
  for (size_t i = 0; i < parameters_.size(); ++i)
    for (const auto& [prefix, moment] : {std::pair{"exp_avg.", &first_moments_[i]}, std::pair{"exp_avg_sq.", &second_moments_[i]}}) {
      host.push_back(to_host_f32(moment->view));
      const Tensor& t = moment->view;
      tensors.push_back({prefix + parameters_[i].name, DType::f32,
                         std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.rank), host.back().data()});
    }
  write_safetensors(path, tensors, {{"cst.optimizer_steps", std::to_string(steps_taken_)}});
}

void AdamW::load(const std::string& path) {
  SafetensorsFile file(path);
  auto steps = file.metadata().find("cst.optimizer_steps");
  if (steps == file.metadata().end()) fail(path, ": not a cst optimizer state (no cst.optimizer_steps)");
  steps_taken_ = std::stoll(steps->second);
  for (size_t i = 0; i < parameters_.size(); ++i)
    for (const auto& [prefix, moment] : {std::pair{"exp_avg.", &first_moments_[i]}, std::pair{"exp_avg_sq.", &second_moments_[i]}}) {
      const std::string name = prefix + parameters_[i].name;
      const TensorInfo* info = file.find(name);
      if (!info || info->dtype != DType::f32 || info->numel() != moment->view.numel())
        fail(path, ": missing or mis-shaped optimizer tensor ", name);
      copy_tensor(moment->view, make_view(const_cast<uint8_t*>(info->data), {info->numel()}, DType::f32, Device::cpu));
    }
}

}  // namespace cst
