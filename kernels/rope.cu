// CUDA rotary position embedding (HF rotate_half layout), applied in place.
// One thread owns one token and a chunk of rotation pairs i; it computes those angles' cos/sin
// once and applies them to every head of the token, so the trigonometry is paid once per
// (token, pair), not per head.
#include "kernels/cuda_utils.cuh"
#include "kernels/rope.h"

namespace cst::cuda {

// cos/sin of pair i at a position, the same f32 values as the CPU reference: f32 inverse
// frequency (pow evaluated in double, rounded once), f32 angle = position * inv_freq, and cos/sin
// of that f32 angle evaluated in double and rounded. Direction -1 gives the inverse rotation.
__device__ inline void rope_angle(int position, int i, int head_dim, float theta, float direction,
                                  float& cos_angle, float& sin_angle) {
  float exponent = float(2 * i) / float(head_dim);
  float inverse_frequency = 1.0f / float(pow(double(theta), double(exponent)));
  float angle = float(position) * inverse_frequency;
  cos_angle = float(cos(double(angle)));
  sin_angle = direction * float(sin(double(angle)));
}

// x (tokens, heads, head_dim), positions (tokens).
template <int Width, class T>
__global__ void rope_kernel(T* x, const int32_t* positions, int64_t tokens, int heads, int head_dim,
                            float theta, float direction) {
  int half = head_dim / 2;
  int64_t chunks_per_token = half / Width;
  int64_t items = tokens * chunks_per_token;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = item / chunks_per_token;
    int i0 = int(item % chunks_per_token) * Width;
    float cos_angle[Width], sin_angle[Width];
    for (int k = 0; k < Width; ++k)
      rope_angle(positions[n], i0 + k, head_dim, theta, direction, cos_angle[k], sin_angle[k]);
    for (int h = 0; h < heads; ++h) {
      T* first_half = x + (n * heads + h) * head_dim + i0;
      T* second_half = first_half + half;
      float first[Width], second[Width], rotated_first[Width], rotated_second[Width];
      load_chunk<Width>(first_half, first);
      load_chunk<Width>(second_half, second);
      for (int k = 0; k < Width; ++k) {
        rotated_first[k] = first[k] * cos_angle[k] - second[k] * sin_angle[k];
        rotated_second[k] = second[k] * cos_angle[k] + first[k] * sin_angle[k];
      }
      store_chunk<Width>(first_half, rotated_first);
      store_chunk<Width>(second_half, rotated_second);
    }
  }
}

void rope_apply(const Tensor& x, const Tensor& positions, float theta, bool inverse) {
  const char* op = inverse ? "rope_backward" : "rope_forward";
  check_on_gpu(x, op, "x");
  check_on_gpu(positions, op, "positions");
  check_rank(x, 3, op, "x");
  check_dims(positions, {x.shape[0]}, op, "positions");
  check_dtype(positions, DType::i32, op, "positions");
  int64_t tokens = x.shape[0];
  if (x.shape[2] % 2 != 0) fail(op, ": head_dim must be even, got ", x.describe());
  if (x.shape[1] > (1 << 20) || x.shape[2] > (1 << 20)) fail(op, ": implausible shape ", x.describe());
  int heads = int(x.shape[1]), head_dim = int(x.shape[2]), half = head_dim / 2;
  if (x.numel() == 0) return;
  float direction = inverse ? -1.0f : 1.0f;
  with_float_type(x, op, "x", [&](auto tag) {
    using T = decltype(tag);
    T* data = static_cast<T*>(x.data);
    if (can_use_chunks(half, data))
      rope_kernel<kChunk><<<grid_blocks(tokens * (half / kChunk)), kThreads, 0, stream()>>>(
          data, positions.i32(), tokens, heads, head_dim, theta, direction);
    else
      rope_kernel<1><<<grid_blocks(tokens * half), kThreads, 0, stream()>>>(
          data, positions.i32(), tokens, heads, head_dim, theta, direction);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cst::cuda
