// SwiGLU, the gated MLP activation of Llama/Mistral: out = silu(gate) * up.
//
//   silu(g) = g * s(g),  s = sigmoid,   silu'(g) = s(g) * (1 + g * (1 - s(g)))
//   forward:  out   = silu(gate) * up
//   backward: dgate = dout * up * silu'(gate)
//             dup   = dout * silu(gate)
#pragma once
#include "kernels/tensor.h"

namespace cst {

// All tensors (N, F).
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);

namespace cuda {
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);
}

}  // namespace cst
