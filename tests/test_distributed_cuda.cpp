// Data parallelism on GPUs: two workers, each on its own GPU, summing their gradients through
// NCCL (or through host memory where libnccl.so.2 does not load), must train what one GPU trains
// with twice the accumulation. The bf16 backend rounds the same way on both paths, so the CPU
// test's bounds hold (tests/data_parallel_support.h).
//
// Where no machine has two GPUs, the emulated GPU runs it (cst_emulated_tests, four emulated
// devices) with the emulated NCCL of tests/emulation/nccl/ (built where nccl.h is found), which
// refuses what NCCL refuses; there the gradients must have gone through NCCL.
#include <gtest/gtest.h>

#include "kernels/device.h"
#include "tests/data_parallel_support.h"

namespace cst {
namespace {
using namespace data_parallel_test;

TEST(DataParallelCuda, TwoGpuWorkersTrainWhatOneTrains) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: needs two";
  int gpus = 0;
  CST_ON_CUDA(gpus = cuda::device_count());
  if (gpus < 2) GTEST_SKIP() << "needs two CUDA GPUs, " << gpus << " visible";
  TrainingOutcome pair;
  // A smaller run than the CPU test's, for the emulated GPU's sake: 8 rows (16 CST pairs, of which
  // 3 are held out), 2 steps of one-pair micro-batches, sequences cut to 64 tokens.
  const std::string eight_rows = first_demo_rows(8);
  expect_two_workers_match_one("cuda", pair, [&](TrainOptions& options) {
    options.data_path = eight_rows;
    options.max_steps = 2;
    options.per_device_train_batch_size = 1;
    options.max_length = 64;
    options.max_prompt_length = 48;
  });
#if defined(CST_EMULATED_NCCL)
  EXPECT_EQ(pair.gradient_path, "nccl");
#else
  std::printf("the two GPU workers summed their gradients through %s\n", pair.gradient_path.c_str());
#endif
}

}  // namespace
}  // namespace cst
