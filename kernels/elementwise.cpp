// CPU reference of the elementwise ops and of the counter-based dropout mask.
#include "kernels/elementwise.h"

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

namespace {

constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;

// The splitmix64 output function (Steele, Lea and Flood 2014).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The splitmix64 state a (seed, stream) pair starts from.
uint64_t stream_key(uint64_t seed, uint64_t stream) {
  return mix64(seed ^ mix64(stream + kGoldenGamma));
}

// The index-th splitmix64 output of that stream, its top 24 bits scaled into [0, 1): exact in f32.
float uniform_at(uint64_t key, uint64_t index) {
  uint64_t bits = mix64(key + (index + 1) * kGoldenGamma);
  return float(bits >> 40) * 0x1.0p-24f;
}

void check_same_f32_shape(const char* op, const Tensor& y, const Tensor& x) {
  common_device(op, y, x);
  if (!same_shape(y, x)) fail(op, ": shapes differ: ", y.describe(), " and ", x.describe());
  if (y.device == Device::cpu) check_f32(op, {{&y, "out"}, {&x, "x"}});
}

}  // namespace

float counter_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return uniform_at(stream_key(seed, stream), index);
}

void add_inplace(const Tensor& y, const Tensor& x) {
  check_same_f32_shape("add_inplace", y, x);
  if (y.device == Device::cuda) return CST_ON_CUDA(cuda::add_inplace(y, x));
  float* y_data = y.f32();
  const float* x_data = x.f32();
  int64_t count = y.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < count; ++i) y_data[i] += x_data[i];
}

void scale_inplace(const Tensor& y, float alpha) {
  if (y.device == Device::cuda) return CST_ON_CUDA(cuda::scale_inplace(y, alpha));
  check_dtype(y, DType::f32, "scale_inplace", "y");
  float* y_data = y.f32();
  int64_t count = y.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < count; ++i) y_data[i] *= alpha;
}

void dropout(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t stream) {
  check_same_f32_shape("dropout", out, x);
  if (!(p >= 0.0f && p < 1.0f)) fail("dropout: probability must be in [0, 1), got ", p);
  if (out.device == Device::cuda) return CST_ON_CUDA(cuda::dropout(out, x, p, seed, stream));
  float keep_scale = 1.0f / (1.0f - p);
  uint64_t key = stream_key(seed, stream);
  float* out_data = out.f32();
  const float* x_data = x.f32();
  int64_t count = out.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < count; ++i) {
    bool keep = uniform_at(key, uint64_t(i)) >= p;
    out_data[i] = keep ? x_data[i] * keep_scale : 0.0f;
  }
}

}  // namespace cst
