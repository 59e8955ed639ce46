// AdamW over the LoRA parameters with global-norm clipping (kernels/adamw.h has the math).
// Moments are f32 tensors on the parameters' device; state saves to / loads from safetensors.
#pragma once
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "model/lora.h"

namespace cst {

class AdamW {
 public:
  AdamW(std::vector<LoraAdapter::Parameter> parameters, const AdamWConfig& config);

  // sqrt(sum of squared gradients) over every parameter.
  double gradient_norm() const;
  // One update at learning_rate; gradients are scaled by grad_scale first (clipping).
  void step(float learning_rate, float grad_scale);
  int64_t steps_taken() const { return steps_taken_; }

  void save(const std::string& path) const;  // exp_avg.<name>, exp_avg_sq.<name> + step count
  void load(const std::string& path);

 private:
  std::vector<LoraAdapter::Parameter> parameters_;
  std::vector<OwnedTensor> first_moments_, second_moments_;
  AdamWConfig config_;
  int64_t steps_taken_ = 0;
};

// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm = 0.
float clip_scale(double gradient_norm, double max_norm);

}  // namespace cst
