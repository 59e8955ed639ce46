// f32 math in a form the compiler vectorises: arithmetic and bit operations, no library call
// and no branch, so a loop of them under `#pragma omp simd` runs several lanes at once. The CPU
// softmaxes need it: std::exp is a scalar call (about 3 ns on the benchmark machine), and the
// LM head's log-softmax takes tokens x vocabulary exponentials per pass: 33M in the benchmark,
// 50 ms on two threads next to 70 ms for the LM head's GEMM.
//
// vector_exp:
//   exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]
// exp(r) is its Taylor series to r^7 (the remainder is below 1e-8 relative, under a tenth of an
// f32 ulp) and 2^n is written straight into the exponent bits. ln 2 is split into a short high
// part, whose product with n is exact, and the rest, so r keeps its low bits. Relative error is
// about 1e-7. Below -87.3 the result is 0 (the true value is under the smallest normal f32);
// above 88 the input is clamped (softmax arguments are <= 0 and never get there); NaN stays NaN.
#pragma once
#include <bit>
#include <cstdint>

// Marks a function whose loops want wider vectors than the build's baseline (x86-64-v2: 4 f32
// lanes). GCC compiles it also for x86-64-v3 (AVX2, 8 lanes) and x86-64-v4 (AVX-512, 16 lanes)
// and the loader picks the best one the CPU runs: the exp loops get 2.5x and 5x faster. Put it on
// the leaf functions that hold the loops: it does not reach into OpenMP parallel regions, which
// the compiler moves into functions of their own.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CST_WIDE_VECTORS \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define CST_WIDE_VECTORS
#endif

namespace cst {

// condition ? if_true : if_false, as a bit mask. GCC at -O2 keeps a float compare-and-select as a
// branch (comparisons may trap under the default -ftrapping-math), and a branch stops the loop
// from vectorising; integer masks do not.
inline float select_f32(bool condition, float if_true, float if_false) {
  int32_t mask = -int32_t(condition);
  return std::bit_cast<float>((std::bit_cast<int32_t>(if_true) & mask) |
                              (std::bit_cast<int32_t>(if_false) & ~mask));
}

// max(a, b) that keeps a when b is NaN, as std::max(a, b) does.
inline float vector_max(float a, float b) { return select_f32(b > a, b, a); }

inline float vector_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;             // 355 / 512: n * kLn2High is exact
  constexpr float kLn2Low = -2.12194440054690583e-4f;  // ln 2 - kLn2High
  constexpr float kLowest = -87.3f, kHighest = 88.0f;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (an f32 of that size has no
  // fraction bits); unlike std::round it is plain arithmetic.
  constexpr float kRoundingShift = 12582912.0f;
  float clamped = select_f32(x < kLowest, kLowest, x);
  clamped = select_f32(clamped > kHighest, kHighest, clamped);
  float n = (clamped * kLog2e + kRoundingShift) - kRoundingShift;
  float r = (clamped - n * kLn2High) - n * kLn2Low;
  // Horner form of 1 + r + r^2/2! + ... + r^7/7!.
  float series = 1.0f / 5040.0f;
  series = series * r + 1.0f / 720.0f;
  series = series * r + 1.0f / 120.0f;
  series = series * r + 1.0f / 24.0f;
  series = series * r + 1.0f / 6.0f;
  series = series * r + 0.5f;
  series = series * r + 1.0f;
  series = series * r + 1.0f;
  float two_to_n = std::bit_cast<float>((int32_t(n) + 127) << 23);
  float result = select_f32(x < kLowest, 0.0f, series * two_to_n);
  return select_f32(x != x, x, result);
}

}  // namespace cst
