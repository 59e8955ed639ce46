// Device plumbing: which backend a tensor lives on, and the CUDA entry points for memory.
// Ops dispatch with CST_ON_CUDA(...), which in a CPU-only build becomes a clear error.
#pragma once
#include <cstddef>

#include "kernels/error.h"
#include "kernels/tensor.h"

namespace cst {

// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();

namespace cuda {  // implemented in kernels/device.cu
void* allocate(size_t bytes);  // fails with a clear out-of-memory message naming the sizes
void release(void* pointer);
void copy_bytes(void* destination, const void* source, size_t bytes);  // any direction
void zero_bytes(void* destination, size_t bytes);
// Elementwise dtype conversion of count values between two GPU buffers (f32, bf16, f16).
void convert(void* destination, DType destination_dtype, const void* source, DType source_dtype,
             int64_t count);
void synchronize();
int device_count();
int multiprocessor_count();  // of the current GPU
// Bytes of the current GPU's memory in use by every process, as nvidia-smi counts them.
size_t memory_in_use();
// Bracket what `ncu --profile-from-start off` / `nsys --capture-range=cudaProfilerApi` capture.
void profiler_start();
void profiler_stop();
}  // namespace cuda

}  // namespace cst

#ifdef CST_HAVE_CUDA
#define CST_ON_CUDA(call) call
#else
#define CST_ON_CUDA(call) \
  ::cst::fail("this build has no CUDA backend: rebuild on a machine with nvcc to use the GPU")
#endif
