// The emulated GPU itself (cuda_builtins.h, cuda_runtime.cpp): small kernels written here show
// that it runs every thread of every block with the right coordinates, that warp shuffles and
// barriers behave as on the GPU, and that the mistakes it is there to catch (a write past an
// allocation, a thread missing a barrier, a launch the GPU would refuse, a copy past an
// allocation) fail loudly instead of passing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/emulation/cuda_builtins.h"

namespace cst::emulation {
namespace {

// Device memory for a test, freed at the end.
struct DeviceArray {
  float* data = nullptr;
  explicit DeviceArray(size_t count) {
    void* pointer = nullptr;
    EXPECT_EQ(cudaMalloc(&pointer, count * sizeof(float)), cudaSuccess);
    data = static_cast<float*>(pointer);
  }
  ~DeviceArray() { cudaFree(data); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

std::vector<float> download(const float* data, size_t count) {
  std::vector<float> host(count);
  EXPECT_EQ(cudaMemcpyAsync(host.data(), data, count * sizeof(float), cudaMemcpyDeviceToHost, nullptr),
            cudaSuccess);
  return host;
}

// Sets the emulator's schedule for one test and puts back the one it had.
class ScheduleForThisTest {
 public:
  explicit ScheduleForThisTest(Schedule schedule) : saved_(block().schedule()) { block().set_schedule(schedule); }
  ~ScheduleForThisTest() { block().set_schedule(saved_); }

 private:
  Schedule saved_;
};

// Every thread of a 3D grid of 3D blocks writes its linear index at its own place.
void write_linear_index(float* out) {
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (int64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int64_t threads_per_block = int64_t(blockDim.x) * blockDim.y * blockDim.z;
  out[block * threads_per_block + thread] = float(block * threads_per_block + thread);
}

TEST(CudaEmulation, EveryThreadOfEveryBlockRunsOnceWithItsCoordinates) {
  const dim3 grid(3, 2, 2), block(4, 8, 2);  // 12 blocks of 64 threads
  DeviceArray out(12 * 64);
  CST_LAUNCH(grid, block, 0, write_linear_index)(out.data);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> result = download(out.data, 12 * 64);
  for (size_t i = 0; i < result.size(); ++i) ASSERT_EQ(result[i], float(i)) << i;
}

// Each warp sums its lanes' values with shuffles; the block adds the warps' sums after a barrier.
void block_sum(float* out, const float* in) {
  __shared__ float warp_sums[8];
  float value = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) sum += warp_sums[w];
    out[blockIdx.x] = sum;
  }
}

TEST(CudaEmulation, ShufflesAndBarriersSumLikeTheGpu) {
  constexpr int kBlocks = 3, kThreads = 256;
  std::vector<float> host(kBlocks * kThreads);
  for (size_t i = 0; i < host.size(); ++i) host[i] = float(i % 97);
  DeviceArray in(host.size()), out(kBlocks);
  ASSERT_EQ(cudaMemcpyAsync(in.data, host.data(), host.size() * sizeof(float),
                            cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  CST_LAUNCH(kBlocks, kThreads, 0, block_sum)(out.data, in.data);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> sums = download(out.data, kBlocks);
  for (int b = 0; b < kBlocks; ++b) {
    float expected = 0;
    for (int t = 0; t < kThreads; ++t) expected += host[b * kThreads + t];
    EXPECT_EQ(sums[b], expected) << "block " << b;  // small integers: exact in any order
  }
}

void write_one_past_the_end(float* out, int count) {
  if (threadIdx.x == 0) out[count] = 1.0f;
}

TEST(CudaEmulation, AWritePastAnAllocationFailsTheLaunch) {
  DeviceArray out(10);
  CST_LAUNCH(1, 32, 0, write_one_past_the_end)(out.data, 10);
  const cudaError_t error = cudaGetLastError();
  EXPECT_EQ(error, cudaErrorIllegalAddress);
  const std::string message = cudaGetErrorString(error);
  EXPECT_NE(message.find("write_one_past_the_end wrote outside"), std::string::npos) << message;
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << "the error is reported once";
}

void thread_zero_skips_the_barrier(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

TEST(CudaEmulation, AThreadMissingABarrierIsADeadlockReport) {
  ScheduleForThisTest use({Schedule::Order::in_order, 0});  // block (0, 0, 0) deadlocks first
  DeviceArray out(64);
  CST_LAUNCH(2, 64, 0, thread_zero_skips_the_barrier)(out.data);
  const cudaError_t error = cudaGetLastError();
  EXPECT_EQ(error, cudaErrorLaunchFailure);
  const std::string message = cudaGetErrorString(error);
  const std::string expected =
      "block (0, 0, 0): the block deadlocks: 63 threads wait in block_barrier; 1 threads finished";
  EXPECT_NE(message.find(expected), std::string::npos) << message;
}

void do_nothing(float*) {}

TEST(CudaEmulation, LaunchesTheGpuRefusesAreRefused) {
  DeviceArray out(1);
  CST_LAUNCH(1, 2048, 0, do_nothing)(out.data);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  CST_LAUNCH(dim3(1, 70000), 32, 0, do_nothing)(out.data);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  CST_LAUNCH(1, 32, 300 * 1024, do_nothing)(out.data);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

TEST(CudaEmulation, FreshMemoryIsNanAndCopiesStayInsideAllocations) {
  DeviceArray data(16);
  for (float value : download(data.data, 16)) EXPECT_TRUE(std::isnan(value));
  std::vector<float> host(17, 1.0f);
  EXPECT_EQ(cudaMemcpyAsync(data.data, host.data(), 17 * sizeof(float), cudaMemcpyHostToDevice, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemsetAsync(data.data + 8, 0, 9 * sizeof(float), nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemsetAsync(data.data + 8, 0, 8 * sizeof(float), nullptr), cudaSuccess);
}

// ---- schedules: the order of the threads' turns and of the grid's blocks ----

const Schedule kSchedules[] = {{Schedule::Order::in_order, 0}, {Schedule::Order::reversed, 0},
                               {Schedule::Order::shuffled, 1}, {Schedule::Order::shuffled, 2}};

TEST(CudaEmulation, EverySchedulePermutesTheThreadsAndBlocks) {
  std::vector<int> order;
  for (const Schedule& schedule : kSchedules) {
    ScheduleForThisTest use(schedule);
    block().put_in_schedule_order(order, 100);
    std::vector<int> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < 100; ++i) ASSERT_EQ(sorted[i], i);
  }
  std::vector<int> first, second;
  ScheduleForThisTest use({Schedule::Order::shuffled, 7});
  block().put_in_schedule_order(first, 100);
  block().put_in_schedule_order(second, 100);
  EXPECT_NE(first, second) << "a shuffled schedule draws a new order each time";
  block().set_schedule({Schedule::Order::reversed, 0});
  block().put_in_schedule_order(first, 3);
  EXPECT_EQ(first, (std::vector<int>{2, 1, 0}));
}

TEST(CudaEmulation, CorrectKernelsGiveTheSameResultUnderEverySchedule) {
  constexpr int kBlocks = 3, kThreads = 256;
  std::vector<float> host(kBlocks * kThreads);
  for (size_t i = 0; i < host.size(); ++i) host[i] = float(i % 89);
  DeviceArray in(host.size()), out(kBlocks), indices(12 * 64);
  ASSERT_EQ(cudaMemcpyAsync(in.data, host.data(), host.size() * sizeof(float),
                            cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  for (const Schedule& schedule : kSchedules) {
    ScheduleForThisTest use(schedule);
    CST_LAUNCH(kBlocks, kThreads, 0, block_sum)(out.data, in.data);
    CST_LAUNCH(dim3(3, 2, 2), dim3(4, 8, 2), 0, write_linear_index)(indices.data);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> sums = download(out.data, kBlocks);
    for (int b = 0; b < kBlocks; ++b) {
      float expected = 0;
      for (int t = 0; t < kThreads; ++t) expected += host[b * kThreads + t];
      EXPECT_EQ(sums[b], expected) << "block " << b;
    }
    const std::vector<float> linear = download(indices.data, 12 * 64);
    for (size_t i = 0; i < linear.size(); ++i) ASSERT_EQ(linear[i], float(i)) << i;
  }
}

// Thread 32 hands a value to thread 0 through shared memory, with or without the barrier that
// orders the write before the read.
template <bool kBarrier>
void hand_over(float* out, float value) {
  __shared__ float handed;
  if (threadIdx.x == 32) handed = value;
  if (kBarrier) __syncthreads();
  if (threadIdx.x == 0) out[0] = handed;
}

TEST(CudaEmulation, AMissingBarrierShowsAsResultsThatDependOnTheSchedule) {
  DeviceArray out(1);
  auto handed_over = [&](bool barrier, Schedule::Order order, float value) {
    ScheduleForThisTest use({order, 0});
    if (barrier)
      CST_LAUNCH(1, 64, 0, hand_over<true>)(out.data, value);
    else
      CST_LAUNCH(1, 64, 0, hand_over<false>)(out.data, value);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    return download(out.data, 1)[0];
  };
  EXPECT_EQ(handed_over(true, Schedule::Order::in_order, 1.0f), 1.0f);
  EXPECT_EQ(handed_over(true, Schedule::Order::reversed, 2.0f), 2.0f);
  // Without the barrier, thread 0 reads before thread 32 writes when it goes first.
  EXPECT_NE(handed_over(false, Schedule::Order::in_order, 3.0f), 3.0f);
  EXPECT_EQ(handed_over(false, Schedule::Order::reversed, 4.0f), 4.0f);
}

// Block 1 reads what block 0 writes in the same launch: on the GPU nothing orders the two.
void read_another_blocks_write(float* data) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) data[0] = 5.0f;
  else data[1] = data[0];
}

TEST(CudaEmulation, BlocksThatDependOnEachOtherShowUnderTheReversedSchedule) {
  DeviceArray data(2);
  ASSERT_EQ(cudaMemsetAsync(data.data, 0, 2 * sizeof(float), nullptr), cudaSuccess);
  {
    ScheduleForThisTest use({Schedule::Order::in_order, 0});
    CST_LAUNCH(2, 32, 0, read_another_blocks_write)(data.data);
  }
  EXPECT_EQ(download(data.data, 2)[1], 5.0f);
  ASSERT_EQ(cudaMemsetAsync(data.data, 0, 2 * sizeof(float), nullptr), cudaSuccess);
  {
    ScheduleForThisTest use({Schedule::Order::reversed, 0});
    CST_LAUNCH(2, 32, 0, read_another_blocks_write)(data.data);
  }
  EXPECT_EQ(download(data.data, 2)[1], 0.0f);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaEmulation, TheScheduleComesFromTheEnvironment) {
  const char* before = std::getenv("CST_EMULATED_SCHEDULE");
  const std::string saved = before ? before : "";
  auto parse = [](const char* value) {
    setenv("CST_EMULATED_SCHEDULE", value, 1);
    return schedule_from_environment();
  };
  EXPECT_EQ(parse("in_order").order, Schedule::Order::in_order);
  EXPECT_EQ(parse("reversed").order, Schedule::Order::reversed);
  EXPECT_EQ(parse("shuffled").order, Schedule::Order::shuffled);
  EXPECT_EQ(parse("shuffled:42").seed, 42u);
  for (const char* bad : {"sideways", "shuffled:", "shuffled:x1", "shuffled42", "reversed:1"}) {
    try {
      parse(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("must be in_order, reversed, shuffled or shuffled:<seed>"),
                std::string::npos)
          << error.what();
    }
  }
  if (before)
    setenv("CST_EMULATED_SCHEDULE", saved.c_str(), 1);
  else
    unsetenv("CST_EMULATED_SCHEDULE");
}

}  // namespace
}  // namespace cst::emulation
