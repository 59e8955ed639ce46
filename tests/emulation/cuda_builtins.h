// The CUDA backend on the CPU: this header is included first (g++ -include) into every .cu file
// of the emulated build, which compiles kernels/*.cu as C++ and links the host models of the CUDA
// runtime (cuda_runtime.cpp) and of cuBLASLt (cublaslt.cpp) in place of NVIDIA's libraries. The
// kernels then run block by block on tests/emulation/block_emulator.h, one fiber per thread, so
// the GPU tests (tests/test_cuda_*.cu/.cpp, tests/test_attention_cuda.cu) check the whole CUDA
// backend against the CPU backend on a machine without a GPU.
//
// What a kernel sees here:
//   threadIdx, blockIdx, blockDim, gridDim   the running fiber's coordinates
//   __syncthreads                            a barrier over every thread of the block
//   __shfl_xor_sync                          an exchange inside the warp (full mask only)
//   __shared__ arrays                        function statics: one copy, and blocks run one at a
//                                            time on one thread, so each block has them alone
//   dynamic_shared_memory()                  the block's dynamic shared memory, NaN-filled
//   the flash attention primitives           attention_primitives_model.h
// CUDA's own headers give the types (dim3, float4, __nv_bfloat16) and bf16 conversions, which
// have host versions. Launches (CST_LAUNCH, kernels/cuda_common.cuh) run every block of the grid
// before they return, as if the stream were synchronised after each.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tests/emulation/block_emulator.h"

#define CST_CUDA_EMULATION 1

// CUDA's headers define __shared__ as nothing for a host compiler.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

namespace cst::emulation {

inline uint3 as_uint3(Extent e) { return make_uint3(e.x, e.y, e.z); }
inline dim3 as_dim3(Extent e) { return dim3(e.x, e.y, e.z); }

// Runs every block of a launch; reports the first problem (a block that deadlocks, a bad
// configuration, a write past an allocation) as the launch's error (cuda_runtime.cpp).
void run_grid(const char* kernel, dim3 grid, dim3 block_size, size_t shared_bytes,
              const std::function<void()>& thread_body);

// CST_LAUNCH(grid, block, shared_bytes, kernel)(arguments...): each thread calls the kernel with
// its own copies of the arguments, as kernel parameters are.
template <class Kernel>
struct Launch {
  const char* name;
  dim3 grid, block_size;
  size_t shared_bytes;
  Kernel kernel;

  template <class... Arguments>
  void operator()(const Arguments&... arguments) const {
    run_grid(name, grid, block_size, shared_bytes, [&] { kernel(arguments...); });
  }
};

template <class Kernel>
Launch<Kernel> make_launch(const char* name, dim3 grid, dim3 block_size, size_t shared_bytes,
                           Kernel kernel) {
  return {name, grid, block_size, shared_bytes, kernel};
}

template <class T>
T shuffle_xor_value(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  if (mask != 0xffffffffu) block().fail("__shfl_xor_sync with a partial member mask");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = block().shuffle_xor(bits, lane_mask);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace cst::emulation

#define CST_LAUNCH(grid, block_size, shared_bytes, ...)                                     \
  ::cst::emulation::make_launch(#__VA_ARGS__, dim3(grid), dim3(block_size),                 \
                                size_t(shared_bytes),                                       \
                                [&](auto... arguments) { __VA_ARGS__(arguments...); })

#define threadIdx (::cst::emulation::as_uint3(::cst::emulation::block().thread_index()))
#define blockIdx (::cst::emulation::as_uint3(::cst::emulation::block().block_index()))
#define blockDim (::cst::emulation::as_dim3(::cst::emulation::block().block_extent()))
#define gridDim (::cst::emulation::as_dim3(::cst::emulation::block().grid_extent()))

inline void __syncthreads() { ::cst::emulation::block().block_barrier(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return ::cst::emulation::shuffle_xor_value(mask, value, lane_mask);
}

// CUDA's device max and min of the global namespace.
using std::max;
using std::min;

// nvcc's cuda_runtime.h also takes the kernel itself, not only its address.
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace cst::cuda {
inline unsigned char* dynamic_shared_memory() {
  return reinterpret_cast<unsigned char*>(::cst::emulation::block().dynamic_shared());
}
}  // namespace cst::cuda

#include "tests/emulation/attention_primitives_model.h"
