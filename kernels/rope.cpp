// CPU reference of rotary position embedding (HF rotate_half layout), and the inverse
// frequencies every backend uses.
#include "kernels/rope.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

const char* rope_scaling_type_name(RopeScalingType type) {
  switch (type) {
    case RopeScalingType::none: return "default";
    case RopeScalingType::linear: return "linear";
    case RopeScalingType::llama3: return "llama3";
  }
  fail("rope scaling: unknown type ", int(type));
}

// inv_freq_i = 1 / theta^(2i / D) with every operation in f32, as transformers computes it:
// 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)). powf is evaluated in double and
// rounded once, which is the correctly rounded f32 result torch's f32 pow aims for.
static std::vector<float> unscaled_inverse_frequencies(int64_t head_dim, float theta) {
  std::vector<float> inverse_frequencies(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    float exponent = float(2 * i) / float(head_dim);
    float power = float(std::pow(double(theta), double(exponent)));
    inverse_frequencies[size_t(i)] = 1.0f / power;
  }
  return inverse_frequencies;
}

// transformers' _compute_llama3_parameters step by step in f32. A Python number meeting a tensor
// becomes f32 (torch casts the scalar to the tensor's dtype, comparisons included) after any
// arithmetic among Python numbers was done in double; and `number / tensor` is torch's
// tensor.reciprocal() * number, so the wavelength and L / wavelength are a reciprocal then a
// product, not one division.
static float llama3_scaled(float inverse_frequency, const RopeScaling& scaling) {
  const double context = double(scaling.original_max_position_embeddings);
  const float factor = float(scaling.factor), low = float(scaling.low_freq_factor);
  const float low_freq_wavelength = float(context / scaling.low_freq_factor);
  const float high_freq_wavelength = float(context / scaling.high_freq_factor);
  const float wavelength = (1.0f / inverse_frequency) * float(2 * std::numbers::pi);
  if (wavelength < high_freq_wavelength) return inverse_frequency;
  if (wavelength > low_freq_wavelength) return inverse_frequency / factor;
  const float smooth = ((1.0f / wavelength) * float(context) - low) /
                       float(scaling.high_freq_factor - scaling.low_freq_factor);
  return (1.0f - smooth) * inverse_frequency / factor + smooth * inverse_frequency;
}

OwnedTensor rope_inverse_frequencies(int64_t head_dim, float theta, const RopeScaling& scaling,
                                     Device device) {
  if (head_dim <= 0 || head_dim % 2 != 0) fail("rope: head_dim must be positive and even, got ", head_dim);
  std::vector<float> inverse_frequencies = unscaled_inverse_frequencies(head_dim, theta);
  for (float& inverse_frequency : inverse_frequencies) {
    if (scaling.type == RopeScalingType::linear) inverse_frequency /= float(scaling.factor);
    if (scaling.type == RopeScalingType::llama3) inverse_frequency = llama3_scaled(inverse_frequency, scaling);
  }
  OwnedTensor result({head_dim / 2}, DType::f32, device);
  copy_tensor(result, make_view(inverse_frequencies.data(), {head_dim / 2}, DType::f32, Device::cpu));
  return result;
}

// Rotates every head of every token by its position's angles; direction -1 undoes the rotation
// (the backward: the transpose of a rotation is the rotation by the opposite angle).
static void rope_rotate(const Tensor& x, const Tensor& positions, const Tensor& inverse_frequencies,
                        float direction) {
  int64_t tokens = x.shape[0], heads = x.shape[1], head_dim = x.shape[2], half = head_dim / 2;
  const float* frequency_data = inverse_frequencies.f32();
  const int32_t* position_data = positions.i32();
  float* data = x.f32();
#pragma omp parallel
  {
    std::vector<float> cos_angle(half), sin_angle(half);
#pragma omp for
    for (int64_t n = 0; n < tokens; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        // The angle is the f32 product, as in transformers; cos/sin of that f32 value.
        float angle = float(position_data[n]) * frequency_data[i];
        cos_angle[i] = float(std::cos(double(angle)));
        sin_angle[i] = direction * float(std::sin(double(angle)));
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* head = data + (n * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          float first = head[i], second = head[i + half];
          head[i] = first * cos_angle[i] - second * sin_angle[i];
          head[i + half] = second * cos_angle[i] + first * sin_angle[i];
        }
      }
    }
  }
}

static void rope_check(const char* op, const Tensor& x, const Tensor& positions,
                       const Tensor& inverse_frequencies) {
  common_device(op, x, positions, inverse_frequencies);
  check_rank(x, 3, op, "x");
  if (x.shape[2] % 2 != 0) fail(op, ": head_dim must be even, got ", x.describe());
  check_dims(positions, {x.shape[0]}, op, "positions");
  check_dtype(positions, DType::i32, op, "positions");
  check_dims(inverse_frequencies, {x.shape[2] / 2}, op, "inverse_frequencies");
  check_dtype(inverse_frequencies, DType::f32, op, "inverse_frequencies");
}

void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inverse_frequencies) {
  rope_check("rope_forward", x, positions, inverse_frequencies);
  if (x.device == Device::cuda)
    return CST_ON_CUDA(cuda::rope_apply(x, positions, inverse_frequencies, false));
  check_dtype(x, DType::f32, "rope_forward", "x");
  rope_rotate(x, positions, inverse_frequencies, 1.0f);
}

void rope_backward(const Tensor& dx, const Tensor& positions, const Tensor& inverse_frequencies) {
  rope_check("rope_backward", dx, positions, inverse_frequencies);
  if (dx.device == Device::cuda)
    return CST_ON_CUDA(cuda::rope_apply(dx, positions, inverse_frequencies, true));
  check_dtype(dx, DType::f32, "rope_backward", "dx");
  rope_rotate(dx, positions, inverse_frequencies, -1.0f);
}

}  // namespace cst
