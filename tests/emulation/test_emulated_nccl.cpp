// The emulated NCCL (tests/emulation/nccl/) itself: ranks are threads here, each with its own
// emulated device. It must sum as NCCL does, and refuse what NCCL refuses, on every rank at once
// (a rank that failed alone would leave the others waiting), or the multi-GPU test that relies on
// it could pass on a mistake.
#if defined(CST_EMULATED_NCCL)
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

// The emulated library, found as train/distributed_cuda.cu finds NCCL (the program's run path).
struct Nccl {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;

  Nccl() {
    void* library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    EXPECT_NE(library, nullptr) << dlerror();
    if (library == nullptr) return;
    get_unique_id = reinterpret_cast<decltype(get_unique_id)>(dlsym(library, "ncclGetUniqueId"));
    Dl_info where{};
    EXPECT_TRUE(dladdr(reinterpret_cast<void*>(get_unique_id), &where) != 0 &&
                std::string(where.dli_fname).find("/emulated_nccl/") != std::string::npos)
        << "libnccl.so.2 is not the emulated one";
    init_rank = reinterpret_cast<decltype(init_rank)>(dlsym(library, "ncclCommInitRank"));
    all_reduce = reinterpret_cast<decltype(all_reduce)>(dlsym(library, "ncclAllReduce"));
    group_start = reinterpret_cast<decltype(group_start)>(dlsym(library, "ncclGroupStart"));
    group_end = reinterpret_cast<decltype(group_end)>(dlsym(library, "ncclGroupEnd"));
    destroy = reinterpret_cast<decltype(destroy)>(dlsym(library, "ncclCommDestroy"));
  }
};

const Nccl& nccl() {
  static const Nccl library;
  return library;
}

float* device_floats(const std::vector<float>& values) {
  void* pointer = nullptr;
  EXPECT_EQ(cudaMalloc(&pointer, values.size() * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(pointer, values.data(), values.size() * sizeof(float), cudaMemcpyDefault, nullptr),
            cudaSuccess);
  return static_cast<float*>(pointer);
}

std::vector<float> host_floats(const float* data, size_t count) {
  std::vector<float> values(count);
  EXPECT_EQ(cudaMemcpyAsync(values.data(), data, count * sizeof(float), cudaMemcpyDefault, nullptr), cudaSuccess);
  return values;
}

// Runs `rank_main(rank, communicator)` for ranks 0..devices.size()-1, each on its own thread and
// the CUDA device given; returns each rank's ncclCommInitRank result (rank_main runs after a
// successful one).
std::vector<ncclResult_t> run_ranks(const std::vector<int>& devices,
                                    const std::function<void(int, ncclComm_t)>& rank_main) {
  ncclUniqueId id{};
  EXPECT_EQ(nccl().get_unique_id(&id), ncclSuccess);
  const int size = int(devices.size());
  std::vector<ncclResult_t> init_results(devices.size());
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank)
    threads.emplace_back([&, rank] {
      EXPECT_EQ(cudaSetDevice(devices[size_t(rank)]), cudaSuccess);
      ncclComm_t communicator = nullptr;
      init_results[size_t(rank)] = nccl().init_rank(&communicator, size, id, rank);
      if (init_results[size_t(rank)] == ncclSuccess) rank_main(rank, communicator);
      nccl().destroy(communicator);
    });
  for (std::thread& thread : threads) thread.join();
  return init_results;
}

TEST(EmulatedNccl, AGroupOfAllReducesSumsInRankOrderOnEveryRank) {
  // In f32, (1 + 1e8) - 1e8 is 0 and (-1e8 + 1e8) + 1 is 1: the sums are in one order, rank order,
  // and every rank gets the same bits.
  const std::vector<std::vector<float>> first = {{1.0f, 2.0f, -3.5f}, {1e8f, 0.25f, 3.5f}, {-1e8f, 0.5f, 1.0f}};
  const std::vector<std::vector<float>> second = {{7.0f}, {-7.0f}, {0.125f}};
  std::vector<std::vector<float>> first_sums(3), second_sums(3);
  const std::vector<ncclResult_t> init = run_ranks({0, 1, 2}, [&](int rank, ncclComm_t communicator) {
    float* a = device_floats(first[size_t(rank)]);
    float* b = device_floats(second[size_t(rank)]);
    EXPECT_EQ(nccl().group_start(), ncclSuccess);
    EXPECT_EQ(nccl().all_reduce(a, a, 3, ncclFloat32, ncclSum, communicator, nullptr), ncclSuccess);
    EXPECT_EQ(nccl().all_reduce(b, b, 1, ncclFloat32, ncclSum, communicator, nullptr), ncclSuccess);
    EXPECT_EQ(nccl().group_end(), ncclSuccess);
    first_sums[size_t(rank)] = host_floats(a, 3);
    second_sums[size_t(rank)] = host_floats(b, 1);
    cudaFree(a);
    cudaFree(b);
  });
  EXPECT_EQ(init, std::vector<ncclResult_t>(3, ncclSuccess));
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_EQ(first_sums[size_t(rank)], (std::vector<float>{0.0f, 2.75f, 1.0f})) << "rank " << rank;
    EXPECT_EQ(second_sums[size_t(rank)], (std::vector<float>{0.125f})) << "rank " << rank;
  }
}

TEST(EmulatedNccl, TwoRanksOnOneDeviceAreRefusedOnBoth) {
  const std::vector<ncclResult_t> init = run_ranks({1, 1}, [](int, ncclComm_t) {});
  EXPECT_EQ(init, std::vector<ncclResult_t>(2, ncclInvalidUsage));
}

TEST(EmulatedNccl, AllReducesOfDifferentLengthsAreRefusedOnBoth) {
  std::vector<ncclResult_t> results(2);
  run_ranks({0, 1}, [&](int rank, ncclComm_t communicator) {
    float* values = device_floats(std::vector<float>(5, 1.0f));
    results[size_t(rank)] = nccl().all_reduce(values, values, size_t(4 + rank), ncclFloat32, ncclSum,
                                              communicator, nullptr);
    cudaFree(values);
  });
  EXPECT_EQ(results, std::vector<ncclResult_t>(2, ncclInvalidUsage));
}

TEST(EmulatedNccl, HostMemoryAndOtherTypesAreRefused) {
  run_ranks({0}, [](int, ncclComm_t communicator) {
    std::vector<float> host(4, 1.0f);
    EXPECT_EQ(nccl().all_reduce(host.data(), host.data(), 4, ncclFloat32, ncclSum, communicator, nullptr),
              ncclInvalidArgument);
    float* values = device_floats(host);
    EXPECT_EQ(nccl().all_reduce(values, values, 5, ncclFloat32, ncclSum, communicator, nullptr),
              ncclInvalidArgument)
        << "one float past the allocation";
    EXPECT_EQ(nccl().all_reduce(values, values, 2, ncclFloat64, ncclSum, communicator, nullptr),
              ncclInvalidArgument);
    cudaFree(values);
  });
}

}  // namespace
#endif
