// first_non_finite (kernels/tensor.h), which guards model loading against damaged weights: it must
// find NaN and both infinities in f32, bf16 and f16 wherever they sit (the first chunk it scans,
// a later one, the very last value) and pass the largest finite values of each format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/error.h"
#include "kernels/tensor.h"

namespace cst {
namespace {

// `values` stored in `dtype`, as a CPU tensor over `storage`.
Tensor stored_as(DType dtype, const std::vector<float>& values, std::vector<uint32_t>& storage) {
  storage.assign(values.size(), 0);
  const int64_t count = int64_t(values.size());
  if (dtype == DType::f32) {
    std::memcpy(storage.data(), values.data(), values.size() * sizeof(float));
  } else {
    auto* halves = reinterpret_cast<uint16_t*>(storage.data());
    for (size_t i = 0; i < values.size(); ++i)
      halves[i] = dtype == DType::bf16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
  }
  return make_view(storage.data(), {count}, dtype, Device::cpu);
}

TEST(FirstNonFinite, FindsNaNAndInfinitiesInEveryFloatFormat) {
  const float infinity = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<DType, float>> largest_finite = {
      {DType::f32, std::numeric_limits<float>::max()}, {DType::bf16, 3.3895314e38f}, {DType::f16, 65504.0f}};
  for (const auto& [dtype, largest] : largest_finite) {
    std::vector<float> values(10000);
    for (size_t i = 0; i < values.size(); ++i) values[i] = (i % 2 ? -largest : largest) * (float(i % 7 + 1) / 7.0f);
    std::vector<uint32_t> storage;
    EXPECT_EQ(first_non_finite(stored_as(dtype, values, storage)), -1) << dtype_name(dtype);
    for (float bad : {std::nanf(""), infinity, -infinity})
      for (size_t index : {size_t(0), size_t(4100), values.size() - 1}) {
        std::vector<float> damaged = values;
        damaged[index] = bad;
        if (index == 4100) damaged[9000] = bad;  // only the first one is reported
        EXPECT_EQ(first_non_finite(stored_as(dtype, damaged, storage)), int64_t(index))
            << dtype_name(dtype) << " " << bad << " at " << index;
      }
  }
  std::vector<uint32_t> storage;
  EXPECT_THROW(first_non_finite(make_view(storage.data(), {0}, DType::i32, Device::cpu)), Error);
}

}  // namespace
}  // namespace cst
