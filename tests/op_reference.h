// Shared helpers of the op tests: seeded random inputs, tensors made from vectors, relative
// errors, and central-difference gradients of float64 reference functions.
//
// The gradient checks all follow one pattern: the op's output is reduced to a scalar
//   loss = sum(out * R)  for a fixed random R,
// so the analytical backward is fed dout = R, and the numeric gradient is taken of a float64
// reimplementation of the forward written in the test, independently of the kernel code.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <random>
#include <vector>

#include "kernels/tensor.h"

namespace cst::test {

// Deterministic random numbers for a test; every test seeds its own.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double uniform(double low, double high) {
    return std::uniform_real_distribution<double>(low, high)(engine_);
  }
  int64_t integer(int64_t low, int64_t high) {  // inclusive
    return std::uniform_int_distribution<int64_t>(low, high)(engine_);
  }
  std::vector<float> floats(int64_t count, double low = -1, double high = 1) {
    std::vector<float> values(static_cast<size_t>(count));
    for (float& value : values) value = float(uniform(low, high));
    return values;
  }

 private:
  std::mt19937_64 engine_;
};

inline OwnedTensor f32_tensor(std::initializer_list<int64_t> shape,
                              const std::vector<float>& values) {
  OwnedTensor t(shape, DType::f32, Device::cpu);
  CST_CHECK(size_t(t->numel()) == values.size(), "test tensor size");
  std::copy(values.begin(), values.end(), t->f32());
  return t;
}

inline OwnedTensor i32_tensor(std::initializer_list<int64_t> shape,
                              const std::vector<int32_t>& values) {
  OwnedTensor t(shape, DType::i32, Device::cpu);
  CST_CHECK(size_t(t->numel()) == values.size(), "test tensor size");
  std::copy(values.begin(), values.end(), t->i32());
  return t;
}

inline std::vector<float> to_vector(const Tensor& t) {
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

inline std::vector<double> to_double(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}

// ||a - b|| / ||b||, b the trusted side.
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  CST_CHECK(a.size() == b.size(), "relative_error: sizes ", a.size(), " and ", b.size());
  double difference = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(difference) / std::sqrt(norm);
}

inline double relative_error(const std::vector<float>& a, const std::vector<double>& b) {
  return relative_error(to_double(a), b);
}

inline double max_abs_difference(const std::vector<float>& a, const std::vector<double>& b) {
  CST_CHECK(a.size() == b.size(), "max_abs_difference: sizes ", a.size(), " and ", b.size());
  double largest = 0;
  for (size_t i = 0; i < a.size(); ++i) largest = std::max(largest, std::fabs(a[i] - b[i]));
  return largest;
}

// sum(out * weights): the scalar every gradient check differentiates.
inline double weighted_sum(const std::vector<double>& out, const std::vector<float>& weights) {
  CST_CHECK(out.size() == weights.size(), "weighted_sum: sizes ", out.size(), " and ",
            weights.size());
  double sum = 0;
  for (size_t i = 0; i < out.size(); ++i) sum += out[i] * weights[i];
  return sum;
}

// d loss / d x by central differences, all in double. The step 1e-6 keeps the truncation error
// (~step^2 times the third derivative) and the cancellation error (~1e-16 / step) both near
// 1e-10, far below the f32 rounding of the analytical gradients being checked.
inline std::vector<double> numeric_gradient(
    const std::function<double(const std::vector<double>&)>& loss, std::vector<double> x,
    double step = 1e-6) {
  std::vector<double> gradient(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double original = x[i];
    x[i] = original + step;
    double above = loss(x);
    x[i] = original - step;
    double below = loss(x);
    x[i] = original;
    gradient[i] = (above - below) / (2 * step);
  }
  return gradient;
}

// The gradient checks' tolerance on ||analytic - numeric|| / ||numeric||. The numeric side is
// exact to ~1e-10; the analytical side is f32, each element carrying a few ulps (6e-8) per
// accumulated term, and measures 3e-8 to 2e-7 for the sizes tested. 1e-5 leaves a margin of 50
// for other BLAS builds and summation orders, while a wrong term or sign in a backward formula
// gives errors of order 1e-2 to 1.
constexpr double kGradientTolerance = 1e-5;

}  // namespace cst::test
