// CPU reference of rotary position embedding (HF rotate_half layout).
#include "kernels/rope.h"

#include <cmath>
#include <vector>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

// inv_freq_i = 1 / theta^(2i / D) with every operation in f32, as transformers computes it:
// 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)). powf is evaluated in double and
// rounded once, which is the correctly rounded f32 result torch's f32 pow aims for.
static std::vector<float> rope_inverse_frequencies(int64_t head_dim, float theta) {
  std::vector<float> inverse_frequencies(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    float exponent = float(2 * i) / float(head_dim);
    float power = float(std::pow(double(theta), double(exponent)));
    inverse_frequencies[i] = 1.0f / power;
  }
  return inverse_frequencies;
}

// Rotates every head of every token by its position's angles; direction -1 undoes the rotation
// (the backward: the transpose of a rotation is the rotation by the opposite angle).
static void rope_rotate(const Tensor& x, const Tensor& positions, float theta, float direction) {
  int64_t tokens = x.shape[0], heads = x.shape[1], head_dim = x.shape[2], half = head_dim / 2;
  std::vector<float> inverse_frequencies = rope_inverse_frequencies(head_dim, theta);
  const int32_t* position_data = positions.i32();
  float* data = x.f32();
#pragma omp parallel
  {
    std::vector<float> cos_angle(half), sin_angle(half);
#pragma omp for
    for (int64_t n = 0; n < tokens; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        // The angle is the f32 product, as in transformers; cos/sin of that f32 value.
        float angle = float(position_data[n]) * inverse_frequencies[i];
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

static void rope_check(const char* op, const Tensor& x, const Tensor& positions) {
  common_device(op, x, positions);
  check_rank(x, 3, op, "x");
  if (x.shape[2] % 2 != 0) fail(op, ": head_dim must be even, got ", x.describe());
  check_dims(positions, {x.shape[0]}, op, "positions");
  check_dtype(positions, DType::i32, op, "positions");
}

void rope_forward(const Tensor& x, const Tensor& positions, float theta) {
  rope_check("rope_forward", x, positions);
  if (x.device == Device::cuda) return CST_ON_CUDA(cuda::rope_apply(x, positions, theta, false));
  check_dtype(x, DType::f32, "rope_forward", "x");
  rope_rotate(x, positions, theta, 1.0f);
}

void rope_backward(const Tensor& dx, const Tensor& positions, float theta) {
  rope_check("rope_backward", dx, positions);
  if (dx.device == Device::cuda) return CST_ON_CUDA(cuda::rope_apply(dx, positions, theta, true));
  check_dtype(dx, DType::f32, "rope_backward", "dx");
  rope_rotate(dx, positions, theta, -1.0f);
}

}  // namespace cst
