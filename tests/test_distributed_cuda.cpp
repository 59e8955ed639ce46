// Data parallelism on GPUs: two workers, each on its own GPU, summing their gradients through
// NCCL (or through host memory where libnccl.so.2 does not load), must train what one GPU trains
// with twice the accumulation. The bf16 backend rounds the same way on both paths, so the CPU
// test's bounds hold (tests/data_parallel_support.h): each micro-batch runs the same kernels
// either way, and only the order in which the gradients are summed differs (and, from the second
// step on, what that does to the adapter). On the emulated GPU, over the seeds 42, 1, 7 and 123,
// the metrics differ by at most 2e-9 of their size (grad_norm; the others by 1e-16 or not at all)
// against 1e-5, and the adapters by at most 2.7e-6 of their norm against 1e-4.
//
// Where no machine has two GPUs, the emulated GPU runs it (cst_emulated_tests, four emulated
// devices) with the emulated NCCL of tests/emulation/nccl/ (built where nccl.h is found), which
// refuses what NCCL refuses; there the gradients must have gone through NCCL.
#include <gtest/gtest.h>

#include "kernels/device.h"
#include "kernels/tensor.h"
#include "train/distributed.h"
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

// NCCL itself where there is one GPU (tools/gpu_check.sh's machine): a worker alone loads
// libnccl.so.2, makes a communicator of one and all-reduces on the backend's stream, which must
// leave its gradients as they were. Only the sum over several GPUs above needs more than one.
TEST(DataParallelCuda, NcclAllReducesOnOneGpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  WorkerGroup alone;
  std::string why_not;
  std::unique_ptr<GradientSum> nccl;
  CST_ON_CUDA(nccl = cuda::nccl_gradient_sum(alone, why_not));
#if !defined(CST_EMULATED_NCCL)
  if (!nccl) GTEST_SKIP() << why_not;
#endif
  ASSERT_TRUE(nccl) << why_not;
  std::vector<OwnedTensor> gradients;
  std::vector<std::vector<float>> values = {std::vector<float>(1000), {-1.5f, 2.25f, 3e-8f}};
  for (size_t i = 0; i < values[0].size(); ++i) values[0][i] = float(i) * 0.37f - 100.0f;
  for (const std::vector<float>& host : values) {
    gradients.emplace_back(std::vector<int64_t>{int64_t(host.size())}, DType::f32, Device::cuda);
    copy_tensor(gradients.back(), make_view(const_cast<float*>(host.data()), {int64_t(host.size())}, DType::f32,
                                            Device::cpu));
  }
  nccl->sum({gradients[0].view, gradients[1].view});
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(to_host_f32(gradients[i]), values[i]) << "tensor " << i;
}

}  // namespace
}  // namespace cst
