// The CUDA runtime functions the backend calls, on the host, for the emulated build (see
// cuda_builtins.h). Four emulated devices of 80 GiB each, so multi-GPU code can select a device
// per worker (each worker is a process of its own, so one process uses one device and the devices
// share nothing); one stream on which everything runs at once (a launch returns when its last
// block has run), so synchronising only reports errors.
//
// Device memory is host memory with two extra guarantees a GPU does not give, for the tests:
//   - a fresh allocation is filled with 0xff bytes (NaN as f32 and bf16, -1 as i32) up to 256 MiB
//     (larger ones are left to untouched zero pages, for tests that need the address range only),
//     so an output a kernel forgets to write shows up;
//   - 256 bytes of 0xff guard on either side of it, checked after every launch: a kernel that
//     writes past an allocation fails that launch, naming the kernel.
// Errors follow the runtime's model: a failed launch is reported by the next cudaGetLastError or
// cudaStreamSynchronize, and cudaGetErrorString gives its whole message (which kernel, which
// block, what went wrong).
#include <sys/mman.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tests/emulation/cuda_builtins.h"

namespace cst::emulation {
namespace {

constexpr int kDeviceCount = 4;
constexpr int kMultiprocessors = 3, kResidentBlocksPerMultiprocessor = 2;
constexpr size_t kDefaultDeviceBytes = size_t(80) << 30;
constexpr size_t kGuardBytes = 256;  // also the alignment of every allocation
constexpr size_t kFilledBytesLimit = size_t(256) << 20;
constexpr size_t kMaxDynamicSharedBytes = 227 * 1024;  // sm_90's opt-in limit per block

struct Allocation {
  std::byte* mapping;  // guard, user bytes, guard
  size_t bytes;        // the user bytes
};

struct Device {
  std::mutex mutex;
  size_t capacity = kDefaultDeviceBytes;  // cstEmulatedSetDeviceBytes changes it
  std::map<const std::byte*, Allocation> allocations;  // by the user pointer
  size_t allocated = 0;
  cudaError_t pending_error = cudaSuccess;
  std::string error_message;
};

// The calling thread's device, as cudaSetDevice chose it (CUDA keeps one per host thread).
thread_local int current_device = 0;

// Never destroyed: tensors of static lifetime (the matmul workspace) are freed after main.
Device& device() {
  static Device* the_device = new Device;
  return *the_device;
}

size_t mapping_bytes(size_t bytes) { return bytes + 2 * kGuardBytes; }

bool guards_intact(const Allocation& allocation) {
  auto intact = [](const std::byte* guard) {
    for (size_t i = 0; i < kGuardBytes; ++i)
      if (guard[i] != std::byte{0xff}) return false;
    return true;
  };
  return intact(allocation.mapping) &&
         intact(allocation.mapping + kGuardBytes + allocation.bytes);
}

// Records a failure for the next cudaGetLastError / cudaStreamSynchronize; the first one stays.
void record_error(cudaError_t error, const std::string& message) {
  Device& d = device();
  if (d.pending_error != cudaSuccess) return;
  d.pending_error = error;
  d.error_message = message;
}

cudaError_t take_error() {
  Device& d = device();
  cudaError_t error = d.pending_error;
  d.pending_error = cudaSuccess;
  return error;
}

// The allocation holding [pointer, pointer + bytes), or null.
const Allocation* allocation_holding(const void* pointer, size_t bytes) {
  auto& allocations = device().allocations;
  auto* address = static_cast<const std::byte*>(pointer);
  auto next = allocations.upper_bound(address);
  if (next == allocations.begin()) return nullptr;
  const auto& [start, allocation] = *std::prev(next);
  return address + bytes <= start + allocation.bytes ? &allocation : nullptr;
}

// False for a range that starts in an allocation and ends past it; host ranges pass.
bool fits_if_on_device(const void* pointer, size_t bytes) {
  return allocation_holding(pointer, 1) == nullptr || allocation_holding(pointer, bytes) != nullptr;
}

// Every live allocation, as the ranges cp.async may read.
std::vector<std::pair<const void*, size_t>> readable_ranges() {
  std::vector<std::pair<const void*, size_t>> ranges;
  for (const auto& [start, allocation] : device().allocations)
    ranges.emplace_back(start, allocation.bytes);
  return ranges;
}

std::string describe(dim3 e) {
  return "(" + std::to_string(e.x) + ", " + std::to_string(e.y) + ", " + std::to_string(e.z) + ")";
}

// What a GPU refuses to launch (cudaErrorInvalidConfiguration, or the shared memory opt-in).
std::string configuration_problem(dim3 grid, dim3 block_size, size_t shared_bytes) {
  const int64_t threads = int64_t(block_size.x) * block_size.y * block_size.z;
  if (threads <= 0 || threads > 1024 || block_size.z > 64)
    return "a block of " + describe(block_size) + " threads";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 2147483647u)
    return "a grid of " + describe(grid) + " blocks";
  if (shared_bytes > kMaxDynamicSharedBytes)
    return std::to_string(shared_bytes) + " bytes of dynamic shared memory";
  return "";
}

}  // namespace

void run_grid(const char* kernel, dim3 grid, dim3 block_size, size_t shared_bytes,
              const std::function<void()>& thread_body) {
  std::string problem = configuration_problem(grid, block_size, shared_bytes);
  if (!problem.empty()) {
    record_error(cudaErrorInvalidConfiguration,
                 std::string("invalid configuration for ") + kernel + ": " + problem);
    return;
  }
  BlockEmulator& emulator = block();
  emulator.set_readable(readable_ranges());
  const Extent block_extent{block_size.x, block_size.y, block_size.z};
  const Extent grid_extent{grid.x, grid.y, grid.z};
  // The blocks run one after the other, in the order of the emulator's schedule: on the GPU no
  // block may rely on another of the same launch having run before it.
  std::vector<int64_t> blocks;
  emulator.put_in_schedule_order(blocks, grid_extent.count());
  for (int64_t linear : blocks) {
    const Extent index{unsigned(linear % grid.x), unsigned(linear / grid.x % grid.y),
                       unsigned(linear / (int64_t(grid.x) * grid.y))};
    std::string error = emulator.run(block_extent, index, grid_extent, shared_bytes,
                                     [&](std::byte*, int) { thread_body(); });
    if (!error.empty()) {
      record_error(cudaErrorLaunchFailure, std::string(kernel) + ", block " +
                                               describe(dim3(index.x, index.y, index.z)) + ": " + error);
      return;
    }
  }
  for (const auto& [start, allocation] : device().allocations)
    if (!guards_intact(allocation)) {
      record_error(cudaErrorIllegalAddress,
                   std::string(kernel) + " wrote outside an allocation of " +
                       std::to_string(allocation.bytes) + " bytes");
      return;
    }
}

}  // namespace cst::emulation

using cst::emulation::device;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = cst::emulation::kDeviceCount;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int index) {
  if (index < 0 || index >= cst::emulation::kDeviceCount) return cudaErrorInvalidDevice;
  cst::emulation::current_device = index;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* index) {
  *index = cst::emulation::current_device;
  return cudaSuccess;
}

// For tests of running out of memory: the device's size from now on (80 GiB at first); what is
// allocated stays.
void cstEmulatedSetDeviceBytes(size_t bytes) {
  std::lock_guard<std::mutex> lock(device().mutex);
  device().capacity = bytes;
}

// For the emulated NCCL (tests/emulation/nccl/): whether [pointer, pointer + bytes) lies in one
// allocation, as the buffers of a collective must.
bool cstEmulatedDeviceRange(const void* pointer, size_t bytes) {
  std::lock_guard<std::mutex> lock(device().mutex);
  return cst::emulation::allocation_holding(pointer, bytes) != nullptr;
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  using namespace cst::emulation;
  Device& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  *pointer = nullptr;
  if (d.allocated > d.capacity || bytes > d.capacity - d.allocated) return cudaErrorMemoryAllocation;
  void* mapping = mmap(nullptr, mapping_bytes(bytes), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping == MAP_FAILED) return cudaErrorMemoryAllocation;
  Allocation allocation{static_cast<std::byte*>(mapping), bytes};
  std::memset(allocation.mapping, 0xff, kGuardBytes);
  std::memset(allocation.mapping + kGuardBytes, 0xff, std::min(bytes, kFilledBytesLimit));
  std::memset(allocation.mapping + kGuardBytes + bytes, 0xff, kGuardBytes);
  d.allocations.emplace(allocation.mapping + kGuardBytes, allocation);
  d.allocated += bytes;
  *pointer = allocation.mapping + kGuardBytes;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  using namespace cst::emulation;
  if (pointer == nullptr) return cudaSuccess;
  Device& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  auto found = d.allocations.find(static_cast<std::byte*>(pointer));
  if (found == d.allocations.end()) return cudaErrorInvalidValue;
  Allocation allocation = found->second;
  d.allocations.erase(found);
  d.allocated -= allocation.bytes;
  munmap(allocation.mapping, mapping_bytes(allocation.bytes));
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  using namespace cst::emulation;
  Device& d = device();
  std::lock_guard<std::mutex> lock(d.mutex);
  *total_bytes = d.capacity;
  *free_bytes = d.allocated < d.capacity ? d.capacity - d.allocated : 0;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** pointer, size_t bytes, unsigned int) {
  *pointer = std::calloc(1, bytes);
  return *pointer ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaHostGetDevicePointer(void** device_pointer, void* host_pointer, unsigned int) {
  *device_pointer = host_pointer;  // mapped memory: one address for both
  return cudaSuccess;
}

// Copies between host memory and allocations, whatever the kind says (the backend passes
// cudaMemcpyDefault). A range that starts inside an allocation and runs past its end is refused,
// as the GPU would fault on it.
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  using namespace cst::emulation;
  if (bytes == 0) return cudaSuccess;
  if (!fits_if_on_device(destination, bytes) || !fits_if_on_device(source, bytes))
    return cudaErrorInvalidValue;
  std::memmove(destination, source, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* destination, int value, size_t bytes, cudaStream_t) {
  using namespace cst::emulation;
  if (bytes == 0) return cudaSuccess;
  if (!allocation_holding(destination, bytes)) return cudaErrorInvalidValue;
  std::memset(destination, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  static int the_stream;
  *stream = reinterpret_cast<cudaStream_t>(&the_stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cst::emulation::take_error(); }
cudaError_t cudaDeviceSynchronize() { return cst::emulation::take_error(); }
cudaError_t cudaGetLastError() { return cst::emulation::take_error(); }
cudaError_t cudaPeekAtLastError() { return device().pending_error; }

const char* cudaGetErrorString(cudaError_t error) {
  // The message of the last launch that failed, which is what a caller asks about.
  if (error != cudaSuccess && !device().error_message.empty()) return device().error_message.c_str();
  return error == cudaSuccess ? "no error" : "an emulated CUDA call failed";
}

// A small GPU, so that kernels whose grid is what the GPU holds at once (resident_grid) give
// each block several items and the tests walk those loops; of compute capability 9.0, so that
// the kernels for Hopper run too, their warpgroup multiplies on the models of
// tests/emulation/attention_primitives_model.h.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= cst::emulation::kDeviceCount) return cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount:
      *value = cst::emulation::kMultiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int, size_t) {
  *blocks = cst::emulation::kResidentBlocksPerMultiprocessor;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaProfilerStart() { return cudaSuccess; }
cudaError_t cudaProfilerStop() { return cudaSuccess; }

}  // extern "C"
