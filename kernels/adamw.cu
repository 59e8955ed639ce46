// CUDA AdamW step and the deterministic sum of squares behind gradient-norm clipping.
// Parameters, gradients and moments are f32 (the LoRA master weights and their state).
//
// Both work on lists of tensors. A launch takes up to kSlicesPerLaunch tensors as a kernel
// argument (blockIdx.y picks the tensor, blocks along x stride over it), so nothing is copied to
// the device and nothing waits for the host; a longer list takes a few launches.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"

namespace cst::cuda {

namespace {

// The per-step scalars, computed once on the host in double as torch does with Python floats.
struct AdamWStep {
  float beta1, beta2, epsilon;
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float decay;                  // 1 - lr * weight_decay
  float grad_scale;
};

AdamWStep adamw_step(const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale) {
  double bias_correction1 = 1.0 - std::pow(double(config.beta1), double(step));
  double bias_correction2 = 1.0 - std::pow(double(config.beta2), double(step));
  return {config.beta1,
          config.beta2,
          config.epsilon,
          float(double(learning_rate) / bias_correction1),
          float(std::sqrt(bias_correction2)),
          1.0f - learning_rate * config.weight_decay,
          grad_scale};
}

// 64 tensors of 48 bytes: the list stays inside the 4 KB of kernel arguments every CUDA version
// accepts.
constexpr int kSlicesPerLaunch = 64;

// Blocks along x for a list: enough for its largest tensor, fewer when the list is long (the
// grid-stride loops cover the rest), so every launch is a few waves of blocks.
int blocks_per_tensor(int64_t largest_items, size_t tensors) {
  constexpr int64_t kBlocksPerLaunch = 4096;
  int64_t wanted = (largest_items + kThreads - 1) / kThreads;
  int64_t cap = std::max<int64_t>(1, kBlocksPerLaunch / int64_t(tensors));
  return int(std::clamp<int64_t>(wanted, 1, cap));
}

// ---- the AdamW step ----

struct AdamWSlice {
  float* param;
  const float* grad;
  float* m;
  float* v;
  int64_t count;
  int64_t chunked_count;  // the leading elements moved in 16-byte chunks (0 if misaligned)
};

struct AdamWSlices {
  AdamWSlice slices[kSlicesPerLaunch];
};

// The same order of operations as the CPU reference (torch's single-tensor AdamW).
template <int Width>
__device__ inline void adamw_chunk(const AdamWSlice& slice, int64_t i, const AdamWStep& step) {
  float p[Width], g[Width], m[Width], v[Width];
  load_chunk<Width>(slice.param + i, p);
  load_chunk<Width>(slice.grad + i, g);
  load_chunk<Width>(slice.m + i, m);
  load_chunk<Width>(slice.v + i, v);
  for (int k = 0; k < Width; ++k) {
    float scaled_grad = g[k] * step.grad_scale;
    m[k] = step.beta1 * m[k] + (1.0f - step.beta1) * scaled_grad;
    v[k] = step.beta2 * v[k] + (1.0f - step.beta2) * scaled_grad * scaled_grad;
    float denominator = sqrtf(v[k]) / step.bias_correction2_sqrt + step.epsilon;
    p[k] = p[k] * step.decay - step.step_size * (m[k] / denominator);
  }
  store_chunk<Width>(slice.param + i, p);
  store_chunk<Width>(slice.m + i, m);
  store_chunk<Width>(slice.v + i, v);
}

// __grid_constant__: the list is read in place from the kernel arguments, not copied per thread.
__global__ void adamw_kernel(const __grid_constant__ AdamWSlices list, AdamWStep step) {
  const AdamWSlice& slice = list.slices[blockIdx.y];
  for (int64_t i = first_chunk(kChunk); i < slice.chunked_count; i += chunk_stride(kChunk))
    adamw_chunk<kChunk>(slice, i, step);
  for (int64_t i = slice.chunked_count + first_chunk(1); i < slice.count; i += chunk_stride(1))
    adamw_chunk<1>(slice, i, step);
}

void check_adamw_tensor(const AdamWTensor& t) {
  const char* op = "adamw_update_all";
  for (auto [x, name] : {std::pair{&t.param, "param"}, {&t.grad, "grad"}, {&t.m, "m"}, {&t.v, "v"}}) {
    check_on_gpu(*x, op, name);
    check_dtype(*x, DType::f32, op, name);
    if (x->numel() != t.param.numel())
      fail(op, ": ", name, " ", x->describe(), " does not match param ", t.param.describe());
  }
}

// One launch over up to kSlicesPerLaunch tensors.
void adamw_launch(const AdamWTensor* tensors, size_t count, const AdamWStep& step) {
  AdamWSlices list{};
  int64_t largest_chunks = 0;
  for (size_t k = 0; k < count; ++k) {
    const AdamWTensor& t = tensors[k];
    const int64_t elements = t.param.numel();
    const bool aligned = is_aligned_16(t.param.data) && is_aligned_16(t.grad.data) &&
                         is_aligned_16(t.m.data) && is_aligned_16(t.v.data);
    list.slices[k] = {t.param.f32(), t.grad.f32(), t.m.f32(), t.v.f32(), elements,
                      aligned ? elements / kChunk * kChunk : 0};
    largest_chunks = std::max(largest_chunks, aligned ? elements / kChunk : elements);
  }
  const dim3 grid(blocks_per_tensor(largest_chunks, count), unsigned(count));
  CST_LAUNCH(grid, kThreads, 0, adamw_kernel)(list, step);
  CUDA_CHECK_LAUNCH();
}

// ---- sum of squares ----

struct SquareSlice {
  const float* data;
  int64_t count;
};

struct SquareSlices {
  SquareSlice slices[kSlicesPerLaunch];
};

// Blocks per tensor of the sum of squares: fixed, so the partial sums (and the order they are
// added in) do not depend on the GPU, and the gradient norm is reproducible run to run.
constexpr int kSquareBlocksPerTensor = 16;

// partials[tensor * kSquareBlocksPerTensor + block] = that block's share of the tensor's sum of
// x^2, in double (squares of f32 values are exact in double).
__global__ void sum_of_squares_kernel(double* partials, const __grid_constant__ SquareSlices list) {
  __shared__ double thread_sums[kThreads];
  const SquareSlice& slice = list.slices[blockIdx.y];
  double sum = 0.0;
  for (int64_t i = first_chunk(1); i < slice.count; i += chunk_stride(1)) {
    double value = slice.data[i];
    sum += value * value;
  }
  thread_sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {  // a tree in a fixed order
    if (int(threadIdx.x) < half) thread_sums[threadIdx.x] += thread_sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.y * kSquareBlocksPerTensor + blockIdx.x] = thread_sums[0];
}

// A device buffer of at least `count` doubles, kept and grown for the life of the process; every
// use is on the backend's one stream, so calls cannot overlap.
double* partials_buffer(size_t count) {
  static Buffer buffer;
  if (buffer.size() < sizeof(double) * count) buffer = Buffer(Device::cuda, sizeof(double) * count);
  return static_cast<double*>(buffer.data());
}

}  // namespace

void adamw_update_all(const std::vector<AdamWTensor>& tensors, const AdamWConfig& config,
                      float learning_rate, int64_t step, float grad_scale) {
  if (step < 1) fail("adamw_update_all: step counts from 1, got ", step);
  for (const AdamWTensor& t : tensors) check_adamw_tensor(t);
  const AdamWStep scalars = adamw_step(config, learning_rate, step, grad_scale);
  for (size_t begin = 0; begin < tensors.size(); begin += kSlicesPerLaunch)
    adamw_launch(tensors.data() + begin, std::min<size_t>(kSlicesPerLaunch, tensors.size() - begin),
                 scalars);
}

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWConfig& config, float learning_rate, int64_t step, float grad_scale) {
  cuda::adamw_update_all({AdamWTensor{param, grad, m, v}}, config, learning_rate, step, grad_scale);
}

double sum_of_squares_all(const std::vector<Tensor>& tensors) {
  const char* op = "sum_of_squares_all";
  for (const Tensor& t : tensors) {
    check_on_gpu(t, op, "tensor");
    check_dtype(t, DType::f32, op, "tensor");
  }
  if (tensors.empty()) return 0.0;
  const size_t partial_count = tensors.size() * kSquareBlocksPerTensor;
  double* partials = partials_buffer(partial_count);
  for (size_t begin = 0; begin < tensors.size(); begin += kSlicesPerLaunch) {
    const size_t count = std::min<size_t>(kSlicesPerLaunch, tensors.size() - begin);
    SquareSlices list{};
    for (size_t k = 0; k < count; ++k) list.slices[k] = {tensors[begin + k].f32(), tensors[begin + k].numel()};
    const dim3 grid(kSquareBlocksPerTensor, unsigned(count));
    CST_LAUNCH(grid, kThreads, 0, sum_of_squares_kernel)(
        partials + begin * kSquareBlocksPerTensor, list);
    CUDA_CHECK_LAUNCH();
  }
  std::vector<double> host_partials(partial_count);
  copy_bytes(host_partials.data(), partials, sizeof(double) * partial_count);
  double total = 0.0;
  for (double partial : host_partials) total += partial;  // a fixed order: reproducible
  return total;
}

double sum_of_squares(const Tensor& t) {
  check_on_gpu(t, "sum_of_squares", "t");
  return cuda::sum_of_squares_all({t});
}

}  // namespace cst::cuda
