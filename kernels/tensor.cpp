#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "kernels/device.h"

namespace cst {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  fail("unknown dtype");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

int64_t Tensor::numel() const {
  int64_t count = 1;
  for (int i = 0; i < rank; ++i) count *= shape[i];
  return count;
}

int64_t Tensor::dim(int i) const {
  int index = i < 0 ? rank + i : i;
  CST_CHECK(index >= 0 && index < rank, "dim ", i, " of ", describe());
  return shape[index];
}

std::string Tensor::describe() const {
  std::ostringstream text;
  text << dtype_name(dtype) << "[";
  for (int i = 0; i < rank; ++i) text << (i ? ", " : "") << shape[i];
  text << "] on " << device_name(device);
  return text.str();
}

float* Tensor::f32() const {
  CST_CHECK(dtype == DType::f32, "expected f32, got ", describe());
  return static_cast<float*>(data);
}

int32_t* Tensor::i32() const {
  CST_CHECK(dtype == DType::i32, "expected i32, got ", describe());
  return static_cast<int32_t*>(data);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  CST_CHECK(rank >= 1 && 0 <= begin && begin <= end && end <= shape[0], "rows ", begin, "..", end,
            " of ", describe());
  Tensor view = *this;
  view.shape[0] = end - begin;
  view.data = static_cast<char*>(data) + size_t(begin) * (nbytes() / size_t(shape[0] ? shape[0] : 1));
  if (shape[0] == 0) view.data = data;
  return view;
}

Tensor Tensor::reshaped(std::initializer_list<int64_t> new_shape) const {
  Tensor view = make_view(data, new_shape, dtype, device);
  CST_CHECK(view.numel() == numel(), "cannot reshape ", describe(), " to ", view.describe());
  return view;
}

Tensor make_view(void* data, const std::vector<int64_t>& shape, DType dtype, Device device) {
  CST_CHECK(shape.size() <= size_t(kMaxRank), "rank ", shape.size(), " exceeds ", kMaxRank);
  Tensor t;
  t.data = data;
  t.rank = int(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    CST_CHECK(shape[i] >= 0, "negative dimension");
    t.shape[i] = shape[i];
  }
  t.dtype = dtype;
  t.device = device;
  return t;
}

Tensor make_view(void* data, std::initializer_list<int64_t> shape, DType dtype, Device device) {
  return make_view(data, std::vector<int64_t>(shape), dtype, device);
}

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

void check_shape(const Tensor& t, std::initializer_list<int64_t> expected, const char* what) {
  bool ok = t.rank == int(expected.size());
  int i = 0;
  for (int64_t size : expected) ok = ok && (i < t.rank) && t.shape[i++] == size;
  if (!ok) {
    Tensor wanted = make_view(nullptr, expected, t.dtype, t.device);
    fail(what, ": expected shape ", wanted.describe(), ", got ", t.describe());
  }
}

// ---- Buffer ----

Buffer::Buffer(Device device, size_t bytes) : size_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::cpu) {
    // 64-byte alignment keeps SIMD loads and BLAS happy.
    data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!data_) fail("out of host memory allocating ", bytes, " bytes");
  } else {
    CST_ON_CUDA(data_ = cuda::allocate(bytes));
  }
}

Buffer::~Buffer() { release(); }

void Buffer::release() {
  if (!data_) return;
  if (device_ == Device::cpu) std::free(data_);
#ifdef CST_HAVE_CUDA
  else cuda::release(data_);
#endif
  data_ = nullptr;
  size_ = 0;
}

Buffer::Buffer(Buffer&& other) noexcept
    : data_(other.data_), size_(other.size_), device_(other.device_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    size_ = other.size_;
    device_ = other.device_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

OwnedTensor::OwnedTensor(const std::vector<int64_t>& shape, DType dtype, Device device) {
  view = make_view(nullptr, shape, dtype, device);
  memory = Buffer(device, view.nbytes());
  view.data = memory.data();
  fill_zero(view);
}

OwnedTensor::OwnedTensor(std::initializer_list<int64_t> shape, DType dtype, Device device)
    : OwnedTensor(std::vector<int64_t>(shape), dtype, device) {}

// ---- Arena ----

Arena::Arena(Device device, size_t block_bytes) : device_(device), block_bytes_(block_bytes) {}

void* Arena::allocate_bytes(size_t bytes) {
  bytes = (bytes + 255) / 256 * 256;  // 256-byte alignment for vector loads on every device
  while (current_block_ < blocks_.size() && offset_ + bytes > blocks_[current_block_].size()) {
    ++current_block_;
    offset_ = 0;
  }
  if (current_block_ == blocks_.size()) {
    blocks_.emplace_back(device_, std::max(block_bytes_, bytes));
    offset_ = 0;
  }
  void* pointer = static_cast<char*>(blocks_[current_block_].data()) + offset_;
  offset_ += bytes;
  used_total_ += bytes;
  return pointer;
}

Tensor Arena::alloc(const std::vector<int64_t>& shape, DType dtype) {
  Tensor t = make_view(nullptr, shape, dtype, device_);
  t.data = allocate_bytes(std::max<size_t>(t.nbytes(), 1));
  return t;
}

Tensor Arena::alloc(std::initializer_list<int64_t> shape, DType dtype) {
  return alloc(std::vector<int64_t>(shape), dtype);
}

Tensor Arena::zeros(std::initializer_list<int64_t> shape, DType dtype) {
  Tensor t = alloc(shape, dtype);
  fill_zero(t);
  return t;
}

void Arena::reset() {
  // Steps of growing size (batches of longer sequences) would otherwise keep adding blocks that
  // a larger allocation cannot use, with every block's unused tail wasted.
  if (blocks_.size() > 1) {
    const size_t step_bytes = std::max(used_total_, block_bytes_);
    blocks_.clear();  // before the new block, so the old and new memory are never held together
    blocks_.emplace_back(device_, step_bytes);
  }
  current_block_ = 0;
  offset_ = 0;
  used_total_ = 0;
}

size_t Arena::bytes_reserved() const {
  size_t total = 0;
  for (const Buffer& block : blocks_) total += block.size();
  return total;
}

// ---- conversions ----

float bf16_to_f32(uint16_t value) {
  uint32_t bits = uint32_t(value) << 16;
  float result;
  std::memcpy(&result, &bits, 4);
  return result;
}

uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x7fffffu))  // NaN stays a quiet NaN
    return uint16_t((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t value) {
  uint32_t sign = uint32_t(value & 0x8000) << 16;
  uint32_t exponent = (value >> 10) & 0x1f;
  uint32_t mantissa = value & 0x3ff;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while (!(mantissa & 0x400)) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ff;
      bits = sign | uint32_t(127 - 15 - shift + 1) << 23 | mantissa << 13;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | mantissa << 13;
  } else {
    bits = sign | (exponent - 15 + 127) << 23 | mantissa << 13;
  }
  float result;
  std::memcpy(&result, &bits, 4);
  return result;
}

uint16_t f32_to_f16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  uint32_t sign = (bits >> 16) & 0x8000;
  int32_t exponent = int32_t((bits >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = bits & 0x7fffff;
  if (((bits >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mantissa ? 0x200 : 0));
  if (exponent >= 31) return uint16_t(sign | 0x7c00);  // overflow to infinity
  if (exponent <= 0) {                                  // subnormal or zero
    if (exponent < -10) return uint16_t(sign);
    mantissa |= 0x800000;
    int shift = 14 - exponent;
    uint32_t half = mantissa >> shift;
    uint32_t remainder = mantissa & ((1u << shift) - 1);
    uint32_t midpoint = 1u << (shift - 1);
    if (remainder > midpoint || (remainder == midpoint && (half & 1))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | uint32_t(exponent) << 10 | mantissa >> 13;
  uint32_t remainder = mantissa & 0x1fff;
  if (remainder > 0x1000 || (remainder == 0x1000 && (half & 1))) ++half;  // may carry into exponent
  return uint16_t(half);
}

// ---- copies ----

static float load_as_f32(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(data)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::i32: return float(static_cast<const int32_t*>(data)[i]);
    case DType::u8: return float(static_cast<const uint8_t*>(data)[i]);
  }
  return 0;
}

static void store_from_f32(void* data, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::f32: static_cast<float*>(data)[i] = value; break;
    case DType::bf16: static_cast<uint16_t*>(data)[i] = f32_to_bf16(value); break;
    case DType::f16: static_cast<uint16_t*>(data)[i] = f32_to_f16(value); break;
    case DType::i32: static_cast<int32_t*>(data)[i] = int32_t(value); break;
    case DType::u8: static_cast<uint8_t*>(data)[i] = uint8_t(value); break;
  }
}

void copy_tensor(const Tensor& destination, const Tensor& source) {
  CST_CHECK(destination.numel() == source.numel(), "copy ", source.describe(), " -> ",
            destination.describe());
  if (destination.dtype == source.dtype) {
    if (destination.device == Device::cpu && source.device == Device::cpu) {
      std::memcpy(destination.data, source.data, source.nbytes());
    } else {
      CST_ON_CUDA(cuda::copy_bytes(destination.data, source.data, source.nbytes()));
    }
    return;
  }
  if (destination.device == Device::cpu && source.device == Device::cpu) {
    for (int64_t i = 0; i < source.numel(); ++i)
      store_from_f32(destination.data, destination.dtype, i,
                     load_as_f32(source.data, source.dtype, i));
    return;
  }
  const bool gpu_float_pair = destination.device == Device::cuda && source.device == Device::cuda &&
                              destination.dtype != DType::i32 && source.dtype != DType::i32;
  if (gpu_float_pair) {  // e.g. the f32 LoRA master weights into their bf16 compute copies
    CST_ON_CUDA(cuda::convert(destination.data, destination.dtype, source.data, source.dtype, source.numel()));
    return;
  }
  // Cross-device with conversion: stage on the host, where the conversion happens.
  if (source.device == Device::cpu) {
    Buffer staging(Device::cpu, destination.nbytes());
    Tensor converted = destination;
    converted.data = staging.data();
    converted.device = Device::cpu;
    copy_tensor(converted, source);
    copy_tensor(destination, converted);
  } else {
    Buffer staging(Device::cpu, source.nbytes());
    Tensor source_on_host = source;
    source_on_host.data = staging.data();
    source_on_host.device = Device::cpu;
    copy_tensor(source_on_host, source);
    copy_tensor(destination, source_on_host);
  }
}

std::vector<float> to_host_f32(const Tensor& t) {
  std::vector<float> host(static_cast<size_t>(t.numel()));
  copy_tensor(make_view(host.data(), {t.numel()}, DType::f32, Device::cpu), t);
  return host;
}

namespace {

// An all-ones exponent field means infinity or NaN in every IEEE-style format. The values are
// tested a chunk at a time without branches, and only a chunk that has one is searched for where.
// `found` is an integer of the values' width, not a bool: g++ vectorises that loop (11 GB/s on one
// core, against 2.5 with a bool), so a 14 GB model costs about a second.
template <class Bits, Bits kExponent>
int64_t first_with_full_exponent(const Bits* values, int64_t count) {
  constexpr int64_t kChunk = 4096;
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t end = std::min(count, begin + kChunk);
    Bits found = 0;
    for (int64_t i = begin; i < end; ++i) found |= Bits((values[i] & kExponent) == kExponent);
    if (!found) continue;
    for (int64_t i = begin; i < end; ++i)
      if ((values[i] & kExponent) == kExponent) return i;
  }
  return -1;
}

}  // namespace

int64_t first_non_finite(const Tensor& t) {
  if (t.device != Device::cpu) fail("first_non_finite: ", t.describe(), " is not on the CPU");
  switch (t.dtype) {
    case DType::f32:
      return first_with_full_exponent<uint32_t, 0x7f800000u>(static_cast<const uint32_t*>(t.data), t.numel());
    case DType::bf16:
      return first_with_full_exponent<uint16_t, 0x7f80>(static_cast<const uint16_t*>(t.data), t.numel());
    case DType::f16:
      return first_with_full_exponent<uint16_t, 0x7c00>(static_cast<const uint16_t*>(t.data), t.numel());
    default:
      fail("first_non_finite: ", t.describe(), " is not of a float dtype");
  }
}

void fill_zero(const Tensor& t) {
  if (t.numel() == 0) return;
  if (t.device == Device::cpu) {
    std::memset(t.data, 0, t.nbytes());
  } else {
    CST_ON_CUDA(cuda::zero_bytes(t.data, t.nbytes()));
  }
}

#ifndef CST_HAVE_CUDA
bool cuda_available() { return false; }
#endif

}  // namespace cst
