// Shared pieces of the CUDA kernels: checked calls, the backend's stream, bf16 helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/error.h"
#include "kernels/tensor.h"

namespace cst::cuda {

// Every kernel of the backend runs on this one stream, in order.
cudaStream_t stream();
void check(cudaError_t status, const char* call, const char* file, int line);

inline int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

// Loads a value of a bf16 or f32 tensor as float; stores likewise.
__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ inline T from_float(float x);
template <> __device__ inline float from_float<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

}  // namespace cst::cuda

#define CUDA_CHECK(call) ::cst::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
