// Rotary position embedding, HF "rotate_half" layout (pairs (i, i + D/2), not interleaved).
//
//   inv_freq_i = 1 / theta^(2i / D),  angle = position * inv_freq_i,   i in [0, D/2)
//   forward:  y_i       = x_i cos - x_{i+D/2} sin
//             y_{i+D/2} = x_{i+D/2} cos + x_i sin
//   backward: the rotation is orthogonal, so dx = R(-angle) dy:
//             dx_i       = dy_i cos + dy_{i+D/2} sin
//             dx_{i+D/2} = dy_{i+D/2} cos - dy_i sin
// cos and sin are computed in f32 exactly as transformers does (f32 inv_freq, f32 product).
#pragma once
#include "kernels/tensor.h"

namespace cst {

// x (N, heads, D), rotated in place; positions (N) i32.
void rope_forward(const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& positions, float theta);

namespace cuda {
void rope_apply(const Tensor& x, const Tensor& positions, float theta, bool inverse);
}

}  // namespace cst
