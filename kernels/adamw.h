// AdamW (decoupled weight decay, Loshchilov & Hutter), as torch.optim.AdamW:
//
//   m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
//   m_hat = m / (1 - b1^t)         v_hat = v / (1 - b2^t)
//   p = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
// (torch applies the decay first as p *= 1 - lr wd, then the Adam step; same value up to rounding.)
// Parameters, gradients and both moments are f32 on every backend.
//
// Global gradient norm for clipping: ||g|| = sqrt(sum over all tensors of sum g^2);
// clipping scales every gradient by min(1, max_norm / (||g|| + 1e-6)), as torch's clip_grad_norm_.
#pragma once
#include <vector>

#include "kernels/tensor.h"

namespace cst {

struct AdamWConfig {
  float learning_rate = 5e-5f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  float weight_decay = 0.0f;
};

// step is 1 for the first update. grad is scaled by grad_scale before use (clipping).
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale);

// sum of squares of a f32 tensor, accumulated in double.
double sum_of_squares(const Tensor& t);

// The multi-tensor forms used by the optimizer: one step (or one norm) over every LoRA matrix at
// once. On CUDA each launch covers 64 tensors, whose addresses travel as a kernel argument (no
// upload, no sync): 7 launches for Mistral-7B's 448 LoRA matrices instead of 448.
struct AdamWTensor {
  Tensor param, grad, m, v;
};
void adamw_update_all(const std::vector<AdamWTensor>& tensors, const AdamWConfig& config,
                      float learning_rate, int64_t step, float grad_scale);
// Sum over the tensors of their sums of squares, added in a fixed order (reproducible).
double sum_of_squares_all(const std::vector<Tensor>& tensors);

namespace cuda {
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale);
double sum_of_squares(const Tensor& t);
void adamw_update_all(const std::vector<AdamWTensor>& tensors, const AdamWConfig& config,
                      float learning_rate, int64_t step, float grad_scale);
double sum_of_squares_all(const std::vector<Tensor>& tensors);
}

}  // namespace cst
