// Rotary position embedding, HF "rotate_half" layout (pairs (i, i + D/2), not interleaved).
//
//   angle = position * inv_freq_i,   i in [0, D/2)
//   forward:  y_i       = x_i cos - x_{i+D/2} sin
//             y_{i+D/2} = x_{i+D/2} cos + x_i sin
//   backward: the rotation is orthogonal, so dx = R(-angle) dy:
//             dx_i       = dy_i cos + dy_{i+D/2} sin
//             dx_{i+D/2} = dy_{i+D/2} cos - dy_i sin
//
// The inverse frequencies (rope_inverse_frequencies) are 1 / theta^(2i / D), then scaled as the
// model's config.json says (transformers' ROPE_INIT_FUNCTIONS of the same name):
//   linear:  inv_freq_i / factor
//   llama3:  (Llama 3.1 and later) with wavelength w_i = 2 pi / inv_freq_i, the pretraining context
//            L = original_max_position_embeddings, low = low_freq_factor, high = high_freq_factor:
//              w_i < L / high                 inv_freq_i                    (high frequencies kept)
//              w_i > L / low                  inv_freq_i / factor           (low frequencies scaled)
//              otherwise, s = (L / w_i - low) / (high - low):
//                                             (1 - s) inv_freq_i / factor + s inv_freq_i
// Both leave cos and sin unscaled (transformers' attention_factor is 1.0 for them). Every step is
// an f32 operation in the order transformers evaluates it, so the frequencies, the f32 angle and
// cos/sin of that angle are transformers' values.
#pragma once
#include <cstdint>

#include "kernels/tensor.h"

namespace cst {

enum class RopeScalingType : uint8_t { none, linear, llama3 };

// config.json's rope_scaling (transformers 5: the scaling keys of rope_parameters). The factors
// are kept as the doubles config.json holds: transformers combines some of them in Python (double)
// before an f32 operation uses the result.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  double factor = 1.0;                       // linear and llama3: positive
  double low_freq_factor = 0.0;              // llama3: positive
  double high_freq_factor = 0.0;             // llama3: greater than low_freq_factor
  int original_max_position_embeddings = 0;  // llama3: positive
  bool operator==(const RopeScaling&) const = default;
};

const char* rope_scaling_type_name(RopeScalingType type);  // as config.json spells it

// The (D/2) f32 inverse frequencies of a head dimension D, on `device`: what the RoPE ops take.
OwnedTensor rope_inverse_frequencies(int64_t head_dim, float theta, const RopeScaling& scaling,
                                     Device device);

// x (N, heads, D), rotated in place; positions (N) i32; inverse_frequencies (D/2) f32 on x's
// device, from rope_inverse_frequencies.
void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inverse_frequencies);
void rope_backward(const Tensor& dx, const Tensor& positions, const Tensor& inverse_frequencies);

namespace cuda {
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inverse_frequencies, bool inverse);
}

}  // namespace cst
