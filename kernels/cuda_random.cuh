// The dropout mask's counter-based uniform, callable from host and device. It must equal
// cst::counter_uniform (kernels/elementwise.cpp; the algorithm is spelled out in elementwise.h)
// bit for bit, so a mask drawn on the GPU is the CPU's mask; a test checks this on the host.
#pragma once
#include <cstdint>

namespace cst::cuda {

constexpr uint64_t kSplitmixGamma = 0x9e3779b97f4a7c15ull;

__host__ __device__ inline uint64_t splitmix_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Computed once per launch on the host: every element of one (seed, stream) shares it.
__host__ __device__ inline uint64_t dropout_stream_key(uint64_t seed, uint64_t stream) {
  return splitmix_mix(seed ^ splitmix_mix(stream + kSplitmixGamma));
}

// Uniform in [0, 1) with 24 random bits, exact in f32.
__host__ __device__ inline float uniform_from_key(uint64_t key, uint64_t index) {
  uint64_t bits = splitmix_mix(key + (index + 1) * kSplitmixGamma);
  return float(bits >> 40) * 0x1.0p-24f;
}

}  // namespace cst::cuda
