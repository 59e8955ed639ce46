// A frozen linear layer with an optional LoRA adapter (model/lora.h):
//
//   forward:  y  = x W^T + s * u B^T,   u = dropout(x) A^T          (N, r), saved for backward
//   backward: dx = dy W + dropout'(s * (dy B) A)
//             dB += s * dy^T u
//             dA += (s * dy B)^T dropout(x)
// where s is the LoRA scaling. W never gets a gradient. dropout(x) is recomputed in backward from
// its counter-based mask (kernels/elementwise.h) rather than stored.
#pragma once
#include <cstdint>

#include "kernels/tensor.h"
#include "model/lora.h"

namespace cst {

struct LoraLinear {
  const Tensor& weight;                 // (out, in), frozen
  const LoraPair* lora = nullptr;       // null: no adapter, or adapters disabled
  float scaling = 1.0f;
  float dropout = 0.0f;
  uint64_t dropout_seed = 0;
  uint64_t dropout_stream = 0;          // distinct per (layer, projection)
};

// y (N, out) is overwritten. Returns u (N, r) allocated in the arena, or an empty tensor.
Tensor lora_linear_forward(const Tensor& y, const Tensor& x, const LoraLinear& layer, Arena& arena);

// dx (N, in) is overwritten, or added to when accumulate is true. Accumulates the LoRA gradients.
void lora_linear_backward(const Tensor& dx, bool accumulate, const Tensor& dy, const Tensor& x,
                          const Tensor& u, const LoraLinear& layer, Arena& arena);

}  // namespace cst
