// Data parallelism (train/distributed.h) on the CPU: two worker processes must train what one
// process trains with twice the gradient accumulation (tests/data_parallel_support.h), and a
// failing worker stops the run.
#include <gtest/gtest.h>

#include <filesystem>

#include "train/trainer.h"
#include "tests/data_parallel_support.h"

namespace cst {
namespace {
using namespace data_parallel_test;

TEST(DataParallel, TwoWorkersTrainWhatOneTrainsWithTwiceTheAccumulation) {
  TrainingOutcome pair;
  expect_two_workers_match_one("cpu", pair);
  EXPECT_EQ(pair.gradient_path, "host memory");
}

TEST(DataParallel, AFailingWorkerStopsTheRunWithItsRank) {
  const fs::path run = fresh_dir("failing");
  TrainOptions options = tiny_run(run, 2, 1);
  options.data_path = (run / "missing.jsonl").string();
  try {
    run_training(options);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("of 2 exited with status 1"), std::string::npos) << error.what();
  }
  EXPECT_FALSE(fs::exists(run / "adapter_model.safetensors"));
}

TEST(DataParallel, RefusesMoreWorkersThanAllowed) {
  TrainOptions options = tiny_run(fresh_dir("too_many"), 65, 1);
  EXPECT_THROW(run_training(options), Error);
}

}  // namespace
}  // namespace cst
