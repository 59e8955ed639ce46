// CUDA AdamW step and the deterministic sum of squares behind gradient-norm clipping.
// Parameters, gradients and moments are f32 (the LoRA master weights and their state).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"

namespace cst::cuda {

// The per-step scalars, computed once on the host in double as torch does with Python floats.
struct AdamWStep {
  float beta1, beta2, epsilon;
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float decay;                  // 1 - lr * weight_decay
  float grad_scale;
};

// The same order of operations as the CPU reference (torch's single-tensor AdamW).
template <int Width>
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, AdamWStep step,
                             int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float p[Width], g[Width], m_i[Width], v_i[Width];
    load_chunk<Width>(param + i, p);
    load_chunk<Width>(grad + i, g);
    load_chunk<Width>(m + i, m_i);
    load_chunk<Width>(v + i, v_i);
    for (int k = 0; k < Width; ++k) {
      float scaled_grad = g[k] * step.grad_scale;
      m_i[k] = step.beta1 * m_i[k] + (1.0f - step.beta1) * scaled_grad;
      v_i[k] = step.beta2 * v_i[k] + (1.0f - step.beta2) * scaled_grad * scaled_grad;
      float denominator = sqrtf(v_i[k]) / step.bias_correction2_sqrt + step.epsilon;
      p[k] = p[k] * step.decay - step.step_size * m_i[k] / denominator;
    }
    store_chunk<Width>(param + i, p);
    store_chunk<Width>(m + i, m_i);
    store_chunk<Width>(v + i, v_i);
  }
}

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale) {
  const char* op = "adamw_update";
  for (auto [t, name] : {std::pair{&param, "param"}, {&grad, "grad"}, {&m, "m"}, {&v, "v"}}) {
    check_on_gpu(*t, op, name);
    check_dtype(*t, DType::f32, op, name);
    if (t->numel() != param.numel())
      fail(op, ": ", name, " ", t->describe(), " does not match param ", param.describe());
  }
  if (step < 1) fail(op, ": step counts from 1, got ", step);
  int64_t count = param.numel();
  if (count == 0) return;
  double bias_correction1 = 1.0 - std::pow(double(config.beta1), double(step));
  double bias_correction2 = 1.0 - std::pow(double(config.beta2), double(step));
  AdamWStep scalars{config.beta1,
                    config.beta2,
                    config.epsilon,
                    float(double(learning_rate) / bias_correction1),
                    float(std::sqrt(bias_correction2)),
                    1.0f - learning_rate * config.weight_decay,
                    grad_scale};
  float* p = param.f32();
  float* g = grad.f32();
  if (can_use_chunks(count, p, g, m.f32(), v.f32()))
    adamw_kernel<kChunk><<<grid_blocks(count / kChunk), kThreads, 0, stream()>>>(p, g, m.f32(),
                                                                               v.f32(), scalars, count);
  else
    adamw_kernel<1><<<grid_blocks(count), kThreads, 0, stream()>>>(p, g, m.f32(), v.f32(), scalars,
                                                                   count);
  CUDA_CHECK_LAUNCH();
}

// ---- the multi-tensor step: every tensor in one launch ----

// Where one tensor of the list lives; blockIdx.y picks the tensor, blocks along x stride over it.
struct AdamWSlice {
  float* param;
  const float* grad;
  float* m;
  float* v;
  int64_t count;
};

__global__ void adamw_all_kernel(const AdamWSlice* slices, AdamWStep step) {
  const AdamWSlice slice = slices[blockIdx.y];
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < slice.count;
       i += int64_t(gridDim.x) * blockDim.x) {
    float scaled_grad = slice.grad[i] * step.grad_scale;
    float m_i = step.beta1 * slice.m[i] + (1.0f - step.beta1) * scaled_grad;
    float v_i = step.beta2 * slice.v[i] + (1.0f - step.beta2) * scaled_grad * scaled_grad;
    float denominator = sqrtf(v_i) / step.bias_correction2_sqrt + step.epsilon;
    slice.param[i] = slice.param[i] * step.decay - step.step_size * m_i / denominator;
    slice.m[i] = m_i;
    slice.v[i] = v_i;
  }
}

// A device copy of a small host array, in a buffer kept (and grown) for the life of the process.
template <class T>
const T* upload_list(const std::vector<T>& items) {
  static void* buffer = nullptr;
  static size_t capacity = 0;
  const size_t bytes = sizeof(T) * items.size();
  if (bytes > capacity) {
    if (buffer) release(buffer);
    capacity = std::max(bytes, capacity * 2);
    buffer = allocate(capacity);
  }
  copy_bytes(buffer, items.data(), bytes);
  return static_cast<const T*>(buffer);
}

// Blocks along x: enough for the largest tensor, at most 64 (a grid-stride loop covers the rest).
template <class Count>
int blocks_for_largest(const std::vector<Count>& counts) {
  int64_t largest = 0;
  for (const Count& count : counts) largest = std::max<int64_t>(largest, count);
  return int(std::clamp<int64_t>((largest + kThreads - 1) / kThreads, 1, 64));
}

void adamw_update_all(const std::vector<AdamWTensor>& tensors, const AdamWConfig& config,
                      float learning_rate, int64_t step, float grad_scale) {
  if (tensors.size() > 65535) fail("adamw_update_all: at most 65535 tensors per launch");
  std::vector<AdamWSlice> slices;
  std::vector<int64_t> counts;
  for (const AdamWTensor& t : tensors) {
    for (const Tensor* x : {&t.param, &t.grad, &t.m, &t.v}) check_on_gpu(*x, "adamw_update_all", "tensor");
    slices.push_back({t.param.f32(), t.grad.f32(), t.m.f32(), t.v.f32(), t.param.numel()});
    counts.push_back(t.param.numel());
  }
  double bias_correction1 = 1.0 - std::pow(double(config.beta1), double(step));
  double bias_correction2 = 1.0 - std::pow(double(config.beta2), double(step));
  AdamWStep scalars{config.beta1, config.beta2, config.epsilon,
                    float(double(learning_rate) / bias_correction1), float(std::sqrt(bias_correction2)),
                    1.0f - learning_rate * config.weight_decay, grad_scale};
  const dim3 grid(blocks_for_largest(counts), unsigned(slices.size()));
  adamw_all_kernel<<<grid, kThreads, 0, stream()>>>(upload_list(slices), scalars);
  CUDA_CHECK_LAUNCH();
}

// ---- sum of squares ----

// A fixed number of blocks, so the partial sums (and the order they are added in) do not depend
// on the GPU: the gradient norm is reproducible run to run.
constexpr int kSquareBlocks = 256;

// partials (kSquareBlocks): each block's sum of x^2 over its grid-stride share, in double.
template <class T>
__global__ void sum_of_squares_kernel(double* partials, const T* x, int64_t count) {
  __shared__ double thread_sums[kThreads];
  double sum = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    double value = to_float(x[i]);
    sum += value * value;
  }
  thread_sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {  // tree in a fixed order
    if (threadIdx.x < half) thread_sums[threadIdx.x] += thread_sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = thread_sums[0];
}

double sum_of_squares(const Tensor& t) {
  const char* op = "sum_of_squares";
  check_on_gpu(t, op, "t");
  int64_t count = t.numel();
  if (count == 0) return 0.0;
  // Kept for the life of the process: 2 KiB, reused by every call on the single stream.
  static double* device_partials = static_cast<double*>(allocate(sizeof(double) * kSquareBlocks));
  with_float_type(t, op, "t", [&](auto tag) {
    using T = decltype(tag);
    sum_of_squares_kernel<<<kSquareBlocks, kThreads, 0, stream()>>>(
        device_partials, static_cast<const T*>(t.data), count);
    CUDA_CHECK_LAUNCH();
  });
  std::vector<double> partials(kSquareBlocks);
  copy_bytes(partials.data(), device_partials, sizeof(double) * kSquareBlocks);
  double total = 0.0;
  for (double partial : partials) total += partial;
  return total;
}

// Every tensor at once: blockIdx.y picks the tensor, kBlocksPerTensor blocks share it, and each
// block writes its own partial, added on the host in a fixed order.
constexpr int kBlocksPerTensor = 16;

struct SquareSlice {
  const float* data;
  int64_t count;
};

__global__ void sum_of_squares_all_kernel(double* partials, const SquareSlice* slices) {
  __shared__ double thread_sums[kThreads];
  const SquareSlice slice = slices[blockIdx.y];
  double sum = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < slice.count;
       i += int64_t(gridDim.x) * blockDim.x) {
    double value = slice.data[i];
    sum += value * value;
  }
  thread_sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) thread_sums[threadIdx.x] += thread_sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = thread_sums[0];
}

double sum_of_squares_all(const std::vector<Tensor>& tensors) {
  if (tensors.size() > 65535) fail("sum_of_squares_all: at most 65535 tensors per launch");
  std::vector<SquareSlice> slices;
  for (const Tensor& t : tensors) slices.push_back({t.f32(), t.numel()});
  const size_t partial_count = slices.size() * kBlocksPerTensor;
  static double* device_partials = nullptr;
  static size_t partial_capacity = 0;
  if (partial_count > partial_capacity) {
    if (device_partials) release(device_partials);
    partial_capacity = partial_count;
    device_partials = static_cast<double*>(allocate(sizeof(double) * partial_capacity));
  }
  const dim3 grid(kBlocksPerTensor, unsigned(slices.size()));
  sum_of_squares_all_kernel<<<grid, kThreads, 0, stream()>>>(device_partials, upload_list(slices));
  CUDA_CHECK_LAUNCH();
  std::vector<double> partials(partial_count);
  copy_bytes(partials.data(), device_partials, sizeof(double) * partial_count);
  double total = 0.0;
  for (double partial : partials) total += partial;
  return total;
}

}  // namespace cst::cuda
