// The activation arena (kernels/tensor.h): a step's tensors never overlap, and memory stays at
// the largest step's size however the step sizes vary (as they do from batch to batch).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernels/tensor.h"

namespace cst {
namespace {

constexpr size_t kBlockBytes = 1024;

// One step: a small tensor, then one of `large_bytes`, as a layer's norm output and MLP activation
// come one after the other. Returns the bytes the step used (each allocation rounded to 256).
size_t run_step(Arena& arena, int64_t large_bytes) {
  arena.reset();
  arena.alloc({300}, DType::u8);
  arena.alloc({large_bytes}, DType::u8);
  return arena.bytes_in_use();
}

TEST(Arena, StepsOfGrowingSizeKeepOnlyTheLargestStepsMemory) {
  Arena arena(Device::cpu, kBlockBytes);
  size_t largest = 0;
  for (int64_t large_bytes : {2000, 3000, 5000, 8000}) {
    largest = std::max(largest, run_step(arena, large_bytes));
    arena.reset();
    // Without merging, each larger step would add blocks the next larger step cannot use.
    EXPECT_EQ(arena.bytes_reserved(), largest) << "after a step of " << large_bytes << " bytes";
  }
}

TEST(Arena, AStepNoLargerThanAnEarlierOneAsksForNoMemory) {
  Arena arena(Device::cpu, kBlockBytes);
  run_step(arena, 8000);
  arena.reset();
  const size_t reserved = arena.bytes_reserved();
  for (int64_t large_bytes : {2000, 8000, 100, 5000}) {
    run_step(arena, large_bytes);
    EXPECT_EQ(arena.bytes_reserved(), reserved) << "during a step of " << large_bytes << " bytes";
  }
}

// Every tensor of a step keeps the bytes written to it while the others are written, before and
// after the blocks are merged.
TEST(Arena, TensorsOfOneStepDoNotOverlap) {
  Arena arena(Device::cpu, kBlockBytes);
  for (int step = 0; step < 3; ++step) {
    arena.reset();
    std::vector<Tensor> tensors;
    for (int64_t bytes : {300, 700, 2000, 1, 900, 5000}) {
      tensors.push_back(arena.alloc({bytes}, DType::u8));
      std::memset(tensors.back().data, int(tensors.size()), size_t(bytes));
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto* bytes = static_cast<const unsigned char*>(tensors[i].data);
      for (int64_t j = 0; j < tensors[i].numel(); ++j) ASSERT_EQ(bytes[j], i + 1) << "tensor " << i << ", step " << step;
    }
  }
}

}  // namespace
}  // namespace cst
