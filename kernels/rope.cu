// CUDA rotary position embedding (HF rotate_half layout), applied in place.
// One block per token: its threads first compute the token's cos/sin of every rotation pair into
// shared memory, so the trigonometry is paid once per (token, pair) and not per head, then they
// rotate every head of the token, one chunk of pairs per thread. A block per token (not a thread)
// keeps thousands of blocks in flight for a batch, which a memory-bound kernel needs.
#include "kernels/cuda_utils.cuh"
#include "kernels/rope.h"

namespace cst::cuda {

// cos/sin of pair i at a position, the same f32 values as the CPU reference: f32 angle =
// position * inv_freq, and cos/sin of that f32 angle evaluated in double and rounded. Direction -1
// gives the inverse rotation.
__device__ inline void rope_angle(int position, float inverse_frequency, float direction,
                                  float& cos_angle, float& sin_angle) {
  float angle = float(position) * inverse_frequency;
  cos_angle = float(cos(double(angle)));
  sin_angle = direction * float(sin(double(angle)));
}

// x (tokens, heads, head_dim), positions (tokens), inverse_frequencies (head_dim / 2); grid.x =
// tokens. Dynamic shared memory holds head_dim floats: cos of pair i at [i], sin at [half + i].
template <int Width, class T>
__global__ void rope_kernel(T* x, const int32_t* positions, const float* inverse_frequencies, int heads,
                            int head_dim, float direction) {
  float* angles = reinterpret_cast<float*>(dynamic_shared_memory());
  const int half = head_dim / 2;
  const int64_t token = blockIdx.x;
  const int position = positions[token];
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rope_angle(position, inverse_frequencies[i], direction, angles[i], angles[half + i]);
  __syncthreads();

  const int chunks_per_head = half / Width;
  T* token_x = x + token * heads * head_dim;
  for (int item = threadIdx.x; item < heads * chunks_per_head; item += blockDim.x) {
    const int h = item / chunks_per_head, i0 = (item % chunks_per_head) * Width;
    T* first_half = token_x + int64_t(h) * head_dim + i0;
    T* second_half = first_half + half;
    float first[Width], second[Width], rotated_first[Width], rotated_second[Width];
    load_chunk<Width>(first_half, first);
    load_chunk<Width>(second_half, second);
    for (int k = 0; k < Width; ++k) {
      const float cos_angle = angles[i0 + k], sin_angle = angles[half + i0 + k];
      rotated_first[k] = first[k] * cos_angle - second[k] * sin_angle;
      rotated_second[k] = second[k] * cos_angle + first[k] * sin_angle;
    }
    store_chunk<Width>(first_half, rotated_first);
    store_chunk<Width>(second_half, rotated_second);
  }
}

// Threads per token: one per chunk of the token's heads, whole warps, at most kThreads.
static int rope_threads(int64_t chunks_per_token) {
  int64_t threads = (chunks_per_token + 31) / 32 * 32;
  return int(threads < kThreads ? threads : kThreads);
}

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inverse_frequencies, bool inverse) {
  const char* op = inverse ? "rope_backward" : "rope_forward";
  check_on_gpu(x, op, "x");
  check_on_gpu(positions, op, "positions");
  check_on_gpu(inverse_frequencies, op, "inverse_frequencies");
  check_rank(x, 3, op, "x");
  check_dims(positions, {x.shape[0]}, op, "positions");
  check_dtype(positions, DType::i32, op, "positions");
  int64_t tokens = x.shape[0];
  if (x.shape[2] % 2 != 0) fail(op, ": head_dim must be even, got ", x.describe());
  check_dims(inverse_frequencies, {x.shape[2] / 2}, op, "inverse_frequencies");
  check_dtype(inverse_frequencies, DType::f32, op, "inverse_frequencies");
  // The cos/sin of one token live in shared memory, and heads x pairs indexes with an int.
  constexpr int64_t kMaxHeadDim = 8192;
  if (x.shape[2] > kMaxHeadDim || x.shape[1] * x.shape[2] > (int64_t(1) << 30) || tokens > INT32_MAX)
    fail(op, ": implausible shape ", x.describe(), " (head_dim at most ", kMaxHeadDim, ")");
  int heads = int(x.shape[1]), head_dim = int(x.shape[2]), half = head_dim / 2;
  if (x.numel() == 0) return;
  float direction = inverse ? -1.0f : 1.0f;
  size_t shared_bytes = sizeof(float) * size_t(head_dim);
  with_float_type(x, op, "x", [&](auto tag) {
    using T = decltype(tag);
    T* data = static_cast<T*>(x.data);
    // Chunks need every head's halves 16-byte aligned: a multiple-of-8 half and an aligned base.
    if (can_use_chunks(half, data))
      CST_LAUNCH(unsigned(tokens), rope_threads(int64_t(heads) * (half / kChunk)), shared_bytes,
                 rope_kernel<kChunk>)(data, positions.i32(), inverse_frequencies.f32(), heads,
                                      head_dim, direction);
    else
      CST_LAUNCH(unsigned(tokens), rope_threads(int64_t(heads) * half), shared_bytes,
                 rope_kernel<1>)(data, positions.i32(), inverse_frequencies.f32(), heads,
                                 head_dim, direction);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cst::cuda
