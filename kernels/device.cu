// CUDA memory and error checking for the whole backend.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/device.h"

#include <algorithm>

namespace cst {

bool cuda_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

namespace cuda {

void* allocate(size_t bytes) {
  void* pointer = nullptr;
  cudaError_t status = cudaMalloc(&pointer, bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error so the caller can report and exit cleanly
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail("out of GPU memory: requested ", bytes / (1 << 20), " MiB with ", free_bytes / (1 << 20),
         " MiB free of ", total_bytes / (1 << 20),
         " MiB (fewer tokens at once: --per_device_train_batch_size or --max_length in training, "
         "--batch_size or --max_new_tokens in generation)");
  }
  // Any other failure (no device, a sticky error of an earlier kernel) is not a memory shortage.
  CUDA_CHECK(status);
  return pointer;
}

// Called from destructors, which must not throw; a failing free surfaces at the next checked call.
void release(void* pointer) { cudaFree(pointer); }

// The note's two addresses: the same pinned page seen by the host and by the device.
struct NoteMemory {
  volatile BadIndexNote* host = nullptr;
  BadIndexNote* device = nullptr;
};

static const NoteMemory& note_memory() {
  static const NoteMemory memory = [] {
    void* host = nullptr;
    CUDA_CHECK(cudaHostAlloc(&host, sizeof(BadIndexNote), cudaHostAllocMapped | cudaHostAllocPortable));
    *static_cast<BadIndexNote*>(host) = BadIndexNote{};
    void* device = nullptr;
    CUDA_CHECK(cudaHostGetDevicePointer(&device, host, 0));
    return NoteMemory{static_cast<volatile BadIndexNote*>(host), static_cast<BadIndexNote*>(device)};
  }();
  return memory;
}

BadIndexNote* bad_index_note() { return note_memory().device; }

// Called right after a synchronisation, when every kernel so far has finished and the note is
// complete. It is cleared before the error is thrown, so the next batch starts clean.
static void raise_bad_index() {
  volatile BadIndexNote* note = note_memory().host;
  if (!note->recorded) return;
  const char* what = note->label.what;
  const char* range = note->label.range;
  int64_t limit = note->limit;
  unsigned long long position_value = note->position_value;
  note->recorded = 0;
  fail(what, "[", position_value >> 32, "] = ", int32_t(uint32_t(position_value)),
       " is outside ", range, " [0, ", limit, ")");
}

void copy_bytes(void* destination, const void* source, size_t bytes) {
  // An empty tensor has no memory (null data): nothing to copy, and no pointer to classify.
  if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  raise_bad_index();
}

void zero_bytes(void* destination, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(destination, 0, bytes, stream()));
}

template <class To, class From>
__global__ void convert_kernel(To* destination, const From* source, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    destination[i] = from_float<To>(to_float(source[i]));
}

template <class To>
static void convert_from(To* destination, const void* source, DType source_dtype, int64_t count, int blocks) {
  if (source_dtype == DType::f32)
    CST_LAUNCH(blocks, 256, 0, convert_kernel)(destination, static_cast<const float*>(source), count);
  else if (source_dtype == DType::bf16)
    CST_LAUNCH(blocks, 256, 0, convert_kernel)(destination, static_cast<const __nv_bfloat16*>(source), count);
  else
    fail("GPU dtype conversion from ", dtype_name(source_dtype), " is not supported");
  CUDA_CHECK_LAUNCH();
}

void convert(void* destination, DType destination_dtype, const void* source, DType source_dtype,
             int64_t count) {
  if (count == 0) return;
  const int blocks = int(std::min<int64_t>((count + 255) / 256, 4096));
  if (destination_dtype == DType::f32)
    convert_from(static_cast<float*>(destination), source, source_dtype, count, blocks);
  else if (destination_dtype == DType::bf16)
    convert_from(static_cast<__nv_bfloat16*>(destination), source, source_dtype, count, blocks);
  else
    fail("GPU dtype conversion to ", dtype_name(destination_dtype), " is not supported");
}

void synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  raise_bad_index();
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

int multiprocessor_count() {
  int device = 0, count = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

size_t memory_in_use() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return total_bytes - free_bytes;
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
