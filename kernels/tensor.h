// Tensor: a typed, shaped view of memory on one device. It never owns memory; Buffer and
// Arena do. Ops take Tensors and dispatch on their device, so the model code is written once.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace cst {

enum class Device : uint8_t { cpu, cuda };
enum class DType : uint8_t { f32, bf16, f16, i32, u8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

constexpr int kMaxRank = 4;

struct Tensor {
  void* data = nullptr;
  std::array<int64_t, kMaxRank> shape{};
  int rank = 0;
  DType dtype = DType::f32;
  Device device = Device::cpu;

  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  // dim(-1) is the last dimension.
  int64_t dim(int i) const;
  bool empty() const { return data == nullptr; }
  std::string describe() const;  // "f32[4, 16] on cpu"

  // Typed pointers check the dtype, so a mismatched op fails loudly instead of reading garbage.
  float* f32() const;
  int32_t* i32() const;

  // A view of rows [begin, end) along the first dimension.
  Tensor rows(int64_t begin, int64_t end) const;
  // The same memory seen with another shape of equal element count.
  Tensor reshaped(std::initializer_list<int64_t> new_shape) const;
};

Tensor make_view(void* data, std::initializer_list<int64_t> shape, DType dtype, Device device);
Tensor make_view(void* data, const std::vector<int64_t>& shape, DType dtype, Device device);

bool same_shape(const Tensor& a, const Tensor& b);
void check_shape(const Tensor& t, std::initializer_list<int64_t> expected, const char* what);

// Device memory (host or GPU). Move-only owner of one allocation.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_ = Device::cpu;
};

// A tensor together with the memory it views.
struct OwnedTensor {
  Buffer memory;
  Tensor view;
  OwnedTensor() = default;
  OwnedTensor(std::initializer_list<int64_t> shape, DType dtype, Device device);
  OwnedTensor(const std::vector<int64_t>& shape, DType dtype, Device device);
  operator const Tensor&() const { return view; }
  const Tensor& operator*() const { return view; }
  const Tensor* operator->() const { return &view; }
};

// Bump allocator for a step's activations. Memory is kept across reset(), and a reset() after a
// step that needed more than one block replaces them by one block of that step's size: a step no
// larger than the largest before it then runs in that block and asks the device for nothing.
class Arena {
 public:
  explicit Arena(Device device, size_t block_bytes = size_t(64) << 20);
  Tensor alloc(std::initializer_list<int64_t> shape, DType dtype);
  Tensor alloc(const std::vector<int64_t>& shape, DType dtype);
  // Same as alloc, then zero-filled.
  Tensor zeros(std::initializer_list<int64_t> shape, DType dtype);
  void reset();
  size_t bytes_in_use() const { return used_total_; }
  size_t bytes_reserved() const;
  Device device() const { return device_; }

 private:
  void* allocate_bytes(size_t bytes);
  Device device_;
  size_t block_bytes_;
  std::vector<Buffer> blocks_;
  size_t current_block_ = 0;
  size_t offset_ = 0;
  size_t used_total_ = 0;
};

// Copies between tensors of equal shape, converting dtype and crossing devices as needed.
void copy_tensor(const Tensor& destination, const Tensor& source);
void fill_zero(const Tensor& t);
// The values of a tensor of any float dtype, on any device, as f32 on the host.
std::vector<float> to_host_f32(const Tensor& t);

// The index of the first NaN or infinity in a CPU tensor of a float dtype, or -1 when every value
// is finite. It reads only each value's exponent bits: checking a 7B model is one fast pass.
int64_t first_non_finite(const Tensor& t);

// bf16/f16 <-> f32 conversions used by loading and the CPU reference (round to nearest even).
float bf16_to_f32(uint16_t value);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t value);
uint16_t f32_to_f16(float value);

}  // namespace cst
