// CUDA memory and error checking for the whole backend.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/device.h"

namespace cst {

bool cuda_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

namespace cuda {

void* allocate(size_t bytes) {
  void* pointer = nullptr;
  cudaError_t status = cudaMalloc(&pointer, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so the caller can report and exit cleanly
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail("out of GPU memory: requested ", bytes / (1 << 20), " MiB with ", free_bytes / (1 << 20),
         " MiB free of ", total_bytes / (1 << 20),
         " MiB (reduce --per_device_train_batch_size or --max_length)");
  }
  return pointer;
}

void release(void* pointer) { cudaFree(pointer); }

void copy_bytes(void* destination, const void* source, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void zero_bytes(void* destination, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(destination, 0, bytes, stream()));
}

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream())); }

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

void profiler_start() {
  synchronize();
  CUDA_CHECK(cudaProfilerStart());
}

void profiler_stop() {
  synchronize();
  CUDA_CHECK(cudaProfilerStop());
}

cudaStream_t stream() {
  static cudaStream_t the_stream = [] {
    cudaStream_t created;
    CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return the_stream;
}

void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    fail(file, ":", line, ": ", call, " failed: ", cudaGetErrorString(status));
}

}  // namespace cuda
}  // namespace cst
