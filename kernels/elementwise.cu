// CUDA elementwise ops of the residual stream and LoRA: add, scale, dropout. Memory-bound, so
// each thread moves 16-byte chunks when sizes and alignment allow; the math is f32.
#include "kernels/cuda_random.cuh"
#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"

namespace cst::cuda {

// y (count) += x (count); y and x may differ in dtype (e.g. an f32 LoRA branch into bf16).
template <int Width, class TY, class TX>
__global__ void add_kernel(TY* y, const TX* x, int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float sum[Width], addend[Width];
    load_chunk<Width>(y + i, sum);
    load_chunk<Width>(x + i, addend);
    for (int k = 0; k < Width; ++k) sum[k] += addend[k];
    store_chunk<Width>(y + i, sum);
  }
}

template <int Width, class T>
__global__ void scale_kernel(T* y, float alpha, int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float values[Width];
    load_chunk<Width>(y + i, values);
    for (int k = 0; k < Width; ++k) values[k] *= alpha;
    store_chunk<Width>(y + i, values);
  }
}

// out (count) = x masked and scaled; the same expression as the CPU reference, so f32 results
// are bit-identical. out may alias x: each thread reads its chunk before writing it.
template <int Width, class T>
__global__ void dropout_kernel(T* out, const T* x, float p, float keep_scale, uint64_t key,
                               int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float values[Width];
    load_chunk<Width>(x + i, values);
    for (int k = 0; k < Width; ++k) {
      bool keep = uniform_from_key(key, uint64_t(i + k)) >= p;
      values[k] = keep ? values[k] * keep_scale : 0.0f;
    }
    store_chunk<Width>(out + i, values);
  }
}

static void check_elementwise_pair(const char* op, const Tensor& y, const Tensor& x) {
  check_on_gpu(y, op, "y");
  check_on_gpu(x, op, "x");
  if (y.numel() != x.numel()) fail(op, ": sizes differ: ", y.describe(), " and ", x.describe());
}

void add_inplace(const Tensor& y, const Tensor& x) {
  const char* op = "add_inplace";
  check_elementwise_pair(op, y, x);
  int64_t count = y.numel();
  if (count == 0) return;
  with_float_type(y, op, "y", [&](auto y_tag) {
    with_float_type(x, op, "x", [&](auto x_tag) {
      using TY = decltype(y_tag);
      using TX = decltype(x_tag);
      TY* y_data = static_cast<TY*>(y.data);
      const TX* x_data = static_cast<const TX*>(x.data);
      if (can_use_chunks(count, y_data, x_data))
        CST_LAUNCH(grid_blocks(count / kChunk), kThreads, 0, add_kernel<kChunk>)(y_data, x_data, count);
      else
        CST_LAUNCH(grid_blocks(count), kThreads, 0, add_kernel<1>)(y_data, x_data, count);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void scale_inplace(const Tensor& y, float alpha) {
  const char* op = "scale_inplace";
  check_on_gpu(y, op, "y");
  int64_t count = y.numel();
  if (count == 0) return;
  with_float_type(y, op, "y", [&](auto tag) {
    using T = decltype(tag);
    T* data = static_cast<T*>(y.data);
    if (can_use_chunks(count, data))
      CST_LAUNCH(grid_blocks(count / kChunk), kThreads, 0, scale_kernel<kChunk>)(data, alpha, count);
    else
      CST_LAUNCH(grid_blocks(count), kThreads, 0, scale_kernel<1>)(data, alpha, count);
    CUDA_CHECK_LAUNCH();
  });
}

void dropout(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t stream_id) {
  const char* op = "dropout";
  check_elementwise_pair(op, out, x);
  if (out.dtype != x.dtype) fail(op, ": out ", out.describe(), " and x ", x.describe(), " differ in dtype");
  if (!(p >= 0.0f && p < 1.0f)) fail(op, ": probability must be in [0, 1), got ", p);
  int64_t count = out.numel();
  if (count == 0) return;
  float keep_scale = 1.0f / (1.0f - p);
  uint64_t key = dropout_stream_key(seed, stream_id);
  with_float_type(out, op, "out", [&](auto tag) {
    using T = decltype(tag);
    T* out_data = static_cast<T*>(out.data);
    const T* x_data = static_cast<const T*>(x.data);
    if (can_use_chunks(count, out_data, x_data))
      CST_LAUNCH(grid_blocks(count / kChunk), kThreads, 0, dropout_kernel<kChunk>)(
          out_data, x_data, p, keep_scale, key, count);
    else
      CST_LAUNCH(grid_blocks(count), kThreads, 0, dropout_kernel<1>)(out_data, x_data, p,
                                                                       keep_scale, key, count);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cst::cuda
