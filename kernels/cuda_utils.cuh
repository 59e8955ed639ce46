// Small building blocks shared by the CUDA kernels: dtype dispatch on the host, 16-byte chunked
// loads and stores, launch sizes, and the warp sum.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst::cuda {

// ---- host side ----

// Calls function(T{}) with T = float or __nv_bfloat16 matching the tensor's dtype, so one
// templated launch serves both: `with_float_type(x, op, [&](auto tag) { using T = decltype(tag); })`.
template <class Function>
void with_float_type(const Tensor& t, const char* op, const char* what, Function&& function) {
  switch (t.dtype) {
    case DType::f32: function(float{}); return;
    case DType::bf16: function(__nv_bfloat16{}); return;
    default: fail(op, ": ", what, " must be f32 or bf16, got ", t.describe());
  }
}

// The cuda:: entry points are callable directly, so they check the device themselves.
inline void check_on_gpu(const Tensor& t, const char* op, const char* what) {
  if (t.device != Device::cuda) fail(op, ": ", what, " must be on cuda, got ", t.describe());
}

inline bool is_aligned_16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

// Chunks of 8 elements are one 16-byte load for bf16 (two for f32). A row or array can use them
// when its length is a multiple of 8 and every pointer involved is 16-byte aligned.
constexpr int kChunk = 8;

template <class... Pointers>
bool can_use_chunks(int64_t length, const Pointers*... pointers) {
  return length % kChunk == 0 && (is_aligned_16(pointers) && ...);
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `items` work items. The cap keeps the grid a few waves deep
// on any GPU; the loops cover the rest.
inline int grid_blocks(int64_t items, int threads = kThreads) {
  int64_t blocks = (items + threads - 1) / threads;
  constexpr int64_t kMaxBlocks = 1 << 16;
  if (blocks < 1) blocks = 1;
  return int(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Blocks of `kernel` (launched with kBlockThreads threads, no dynamic shared memory) that the GPU
// holds at once, at most `items`: the grid of a kernel whose blocks each loop over many items,
// which then stay resident from start to end instead of being launched one after another. The
// occupancy is asked once per kernel (each kernel is its own instantiation).
template <auto kernel, int kBlockThreads>
int resident_grid(int64_t items) {
  static const int per_multiprocessor = [] {
    int blocks = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, reinterpret_cast<const void*>(kernel), kBlockThreads, 0));
    return std::max(blocks, 1);
  }();
  int64_t resident = int64_t(per_multiprocessor) * multiprocessor_count();
  return int(std::max<int64_t>(1, std::min(resident, items)));
}

// ---- device side: grid-stride loops over chunks ----
// for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) visits every chunk
// start of a flat array exactly once, whatever the grid size.
__device__ inline int64_t first_chunk(int width) {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * width;
}
__device__ inline int64_t chunk_stride(int width) { return int64_t(gridDim.x) * blockDim.x * width; }

// ---- device side: chunked loads and stores (Width 1: scalar; Width 8: vectorised) ----

// A chunk as it comes from memory, before its conversion to floats. Holding the raw bits lets a
// kernel start the loads of its next row and go on working: converting right after the load
// would wait for it.
template <class T>
struct RawChunk {
  // 16-byte words: f32 as float4 (two loads), bf16 as uint4 (one load)
  using Word = std::conditional_t<std::is_same_v<T, float>, float4, uint4>;
  Word words[sizeof(T) * kChunk / sizeof(Word)];
};

template <class T>
__device__ inline void load_raw_chunk(const T* source, RawChunk<T>& chunk) {
  using Word = typename RawChunk<T>::Word;
  for (int i = 0; i < int(sizeof(chunk.words) / sizeof(Word)); ++i)
    chunk.words[i] = reinterpret_cast<const Word*>(source)[i];
}

__device__ inline void unpack_chunk(const RawChunk<float>& chunk, float (&values)[8]) {
  for (int i = 0; i < 2; ++i) {
    const float4& word = chunk.words[i];
    values[4 * i] = word.x, values[4 * i + 1] = word.y;
    values[4 * i + 2] = word.z, values[4 * i + 3] = word.w;
  }
}

__device__ inline void unpack_chunk(const RawChunk<__nv_bfloat16>& chunk, float (&values)[8]) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(chunk.words);
  for (int k = 0; k < 4; ++k) {
    float2 pair = __bfloat1622float2(pairs[k]);
    values[2 * k] = pair.x;
    values[2 * k + 1] = pair.y;
  }
}

template <class T>
__device__ inline void load_8(const T* source, float (&values)[8]) {
  RawChunk<T> chunk;
  load_raw_chunk(source, chunk);
  unpack_chunk(chunk, values);
}

__device__ inline void store_8(float* destination, const float (&values)[8]) {
  reinterpret_cast<float4*>(destination)[0] = make_float4(values[0], values[1], values[2], values[3]);
  reinterpret_cast<float4*>(destination)[1] = make_float4(values[4], values[5], values[6], values[7]);
}

__device__ inline void store_8(__nv_bfloat16* destination, const float (&values)[8]) {
  union {
    uint4 raw;
    __nv_bfloat162 pairs[4];
  } packed;
  for (int k = 0; k < 4; ++k) packed.pairs[k] = __floats2bfloat162_rn(values[2 * k], values[2 * k + 1]);
  *reinterpret_cast<uint4*>(destination) = packed.raw;
}

template <int Width, class T>
__device__ inline void load_chunk(const T* source, float (&values)[Width]) {
  if constexpr (Width == 1) {
    values[0] = to_float(source[0]);
  } else {
    static_assert(Width == kChunk, "chunks are 1 or 8 elements");
    load_8(source, values);
  }
}

template <int Width, class T>
__device__ inline void store_chunk(T* destination, const float (&values)[Width]) {
  if constexpr (Width == 1) {
    destination[0] = from_float<T>(values[0]);
  } else {
    static_assert(Width == kChunk, "chunks are 1 or 8 elements");
    store_8(destination, values);
  }
}

// ---- device side: reductions ----

// Sum over the 32 lanes of a warp, returned to every lane.
__device__ inline float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

}  // namespace cst::cuda
