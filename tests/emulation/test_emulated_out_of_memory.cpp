// Running out of GPU memory in the middle of training, on an emulated GPU shrunk until the run no
// longer fits: the run must stop with the allocator's one message (what was asked for, what was
// free, which options to lower) and leave no adapter behind.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "train/demo_assets.h"
#include "train/trainer.h"
#include "tests/test_support.h"

// From the emulated CUDA runtime (tests/emulation/cuda_runtime.cpp).
extern "C" void cstEmulatedSetDeviceBytes(size_t bytes);

namespace cst {
namespace {
namespace fs = std::filesystem;

TEST(EmulatedOutOfMemory, TrainingStopsWithTheSizesAndWritesNoAdapter) {
  const demo::DemoFiles& files = testing_support::tiny_demo_files();
  const fs::path run = testing_support::fresh_test_dir("emulated_out_of_memory");
  TrainOptions options;
  options.model_path = files.model_bin;
  options.data_path = files.train_jsonl;
  options.output_dir = run.string();
  options.device = "cuda";
  options.system_prompts = {demo::kHarmlessSystem, demo::kUncensoredSystem};
  options.max_steps = 1;
  options.per_device_train_batch_size = 1;
  options.max_length = 64;
  options.max_prompt_length = 48;

  // 16 MiB more than is in use now: the 2 MB model loads, the activations' first 64 MiB block
  // does not.
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  cstEmulatedSetDeviceBytes(total_bytes - free_bytes + (size_t(16) << 20));
  const std::string message = testing_support::error_of([&] { run_training(options); });
  cstEmulatedSetDeviceBytes(total_bytes);

  EXPECT_NE(message.find("out of GPU memory: requested 64 MiB with "), std::string::npos) << message;
  EXPECT_NE(message.find("--per_device_train_batch_size or --max_length"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(run / "adapter_model.safetensors"));
}

}  // namespace
}  // namespace cst
