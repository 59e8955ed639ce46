// Shared pieces of the CUDA kernels: checked calls, the backend's stream, bf16 helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

// ---- bad indices found on the device ----
// A kernel that meets an index it must not follow (a token id or label outside the vocabulary)
// cannot throw, and reading the indices back on the host before every launch would cost a
// synchronisation per call. So the kernel writes a harmless value instead of reading out of
// bounds and records the index in this note, which lives in pinned host memory mapped into the
// device. The host raises it as a cst::Error at its next synchronisation (synchronize() and
// copy_bytes(), so every download), with the message the CPU reference gives at once.
// What the message says: the argument ("embedding_forward: ids") and the range its values must
// be in ("the vocabulary"), host string literals whose addresses the kernel only copies (a literal
// named in device code would have a device address).
struct BadIndexLabel {
  const char* what;
  const char* range;
};

struct BadIndexNote {
  // position and value share one 64-bit word so that two threads recording at once cannot leave
  // one's position beside the other's value.
  BadIndexLabel label;
  int64_t limit;                      // valid indices are [0, limit)
  unsigned long long position_value;  // position << 32 | uint32(value)
  int recorded;
};

// The note in device-visible memory (made on first use).
BadIndexNote* bad_index_note();

// The first launch to find a bad index keeps the note, so the error names the earliest one.
// Threads of one launch may all write: they write the same label and limit, and each its own
// position and value in one store.
__device__ inline void record_bad_index(BadIndexNote* note, BadIndexLabel label, int64_t position,
                                        int32_t value, int64_t limit) {
  if (*static_cast<volatile int*>(&note->recorded)) return;
  note->label = label;
  note->limit = limit;
  note->position_value = (static_cast<unsigned long long>(position) << 32) | uint32_t(value);
  __threadfence_system();  // the fields reach host memory before the flag that announces them
  note->recorded = 1;
}

}  // namespace cst::cuda

// ---- launches and dynamic shared memory ----
// Every kernel is launched as CST_LAUNCH(grid, block, shared_bytes, kernel)(arguments...) on the
// backend's stream, and finds its dynamic shared memory with dynamic_shared_memory(). Both are
// the CUDA constructs under another name so that tests/emulation/ can give them a host meaning:
// there the kernels compile as C++ and every block runs on the CPU, checked against the CPU
// backend without a GPU.
#ifndef CST_CUDA_EMULATION
#define CST_LAUNCH(grid, block, shared_bytes, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), ::cst::cuda::stream()>>>

namespace cst::cuda {
// One extern array for the whole program: every kernel's dynamic shared memory starts there.
__device__ inline unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char dynamic_shared_bytes[];
  return dynamic_shared_bytes;
}
}  // namespace cst::cuda
#endif

#define CUDA_CHECK(call) ::cst::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
