// A frozen linear layer with an optional LoRA adapter (model/lora.h):
//
//   forward:  y  = x W^T + s * u B^T,   u = dropout(x) A^T          (N, r), saved for backward
//   backward: dx = dy W + dropout'(s * (dy B) A)
//             dB += s * dy^T u
//             dA += (s * dy B)^T dropout(x)
// where s is the LoRA scaling. W never gets a gradient. dropout(x) is recomputed in backward from
// its counter-based mask (kernels/elementwise.h) rather than stored.
//
// Projections of one input group (model/lora.h: q, k, v or gate, up) whose A matrices are stored
// as one (g r, in) matrix A_g run their rank-r products batched, keeping u transposed so that
// every member's part is a contiguous row block and no strided view or copy is needed:
//   forward:  u_g^T = A_g x^T                      (g r, N)   one GEMM for the group
//             y_p  += s u_p B_p^T                            u_p^T = rows [p r, (p+1) r)
//   backward: du_p^T = s B_p^T dy_p^T               written into row block p of du_g^T
//             dB_p += s dy_p^T u_p
//             dA_g += du_g^T x                      one GEMM for the group
//             dx   += du_g A_g                      one GEMM for the group
// A row-major u (N, g r) would instead make each member's u_p a strided column block.
// With dropout each member draws its own mask (as PEFT does), so the members' inputs differ and
// they run one by one through lora_linear_forward/backward.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

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

// The members of one input group, in the order of their A blocks.
struct LoraLinearGroup {
  std::vector<LoraLinear> members;
  const LoraGroupA* group_a = nullptr;  // null: the group's A matrices are not stored as one
  // Every member adapted from the stored A_g and no dropout: the products run batched.
  bool batched() const;
};

// What the group's backward needs from its forward.
struct LoraGroupSaved {
  Tensor u_transposed;                              // (g r, N) when batched
  std::array<Tensor, kMaxInputGroupMembers> u;      // (N, r) per adapted member otherwise
};

// outputs[p] (N, out_p) is overwritten with member p's output.
LoraGroupSaved lora_group_forward(std::span<const Tensor> outputs, const Tensor& x,
                                  const LoraLinearGroup& group, Arena& arena);

// dx (N, in) is overwritten with the sum over members of d(loss)/dx; output_grads[p] is member p's
// dy. Accumulates the LoRA gradients.
void lora_group_backward(const Tensor& dx, std::span<const Tensor> output_grads, const Tensor& x,
                         const LoraGroupSaved& saved, const LoraLinearGroup& group, Arena& arena);

}  // namespace cst
