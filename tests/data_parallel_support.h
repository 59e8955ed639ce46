// Data parallelism (train/distributed.h): the check shared by the CPU and CUDA tests. Two worker
// processes (the test program, started again as workers by tests/test_main.cpp) must train what one
// process trains with twice the gradient accumulation, since they split the same micro-batches and
// sum their gradients.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "train/demo_assets.h"
#include "train/trainer.h"
#include "tests/test_support.h"

namespace cst::data_parallel_test {
namespace fs = std::filesystem;

inline fs::path fresh_dir(const std::string& name) { return testing_support::fresh_test_dir("distributed_" + name); }

inline const demo::DemoFiles& demo_files() { return testing_support::tiny_demo_files(); }

// A tiny CST run with dropout on (the masks depend on the micro-batch's index in its step), a
// held-out split (evaluation is shared out too) and precomputed reference log-probs (likewise).
inline TrainOptions tiny_run(const fs::path& output_dir, int workers, int accumulation) {
  TrainOptions options;
  options.model_path = demo_files().model_bin;
  options.data_path = demo_files().train_jsonl;
  options.output_dir = output_dir.string();
  options.device = "cpu";
  options.threads = 1;
  options.num_processes = workers;
  options.gradient_accumulation_steps = accumulation;
  options.system_prompts = {demo::kHarmlessSystem, demo::kUncensoredSystem};
  options.lora_r = 4;
  options.lora_alpha = 8;
  options.lora_dropout = 0.1;
  options.disable_dropout = false;
  options.learning_rate = 1e-3;
  options.per_device_train_batch_size = 2;
  options.max_length = 128;
  options.max_prompt_length = 96;
  options.max_steps = 3;
  options.eval_split = 0.2;
  options.per_device_eval_batch_size = 3;
  options.precompute_ref_log_probs = true;
  return options;
}

inline std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

inline nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// |a - b| over max(|b|, 1).
inline double scaled_difference(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1.0); }

// The first `rows` rows of the demo's training data, as a file of their own.
inline std::string first_demo_rows(int rows) {
  const fs::path path = fresh_dir("first_rows_" + std::to_string(rows)) / "train.jsonl";
  std::ifstream in(demo_files().train_jsonl);
  std::ofstream out(path);
  std::string line;
  for (int row = 0; row < rows && std::getline(in, line); ++row) out << line << '\n';
  return path.string();
}

// Trains alone with accumulation 4 and as two workers with accumulation 2, and compares; `adjust`
// changes both runs' options (tiny_run's), `pair` is the two workers' outcome.
inline void expect_two_workers_match_one(const std::string& device, TrainingOutcome& pair,
                                         const std::function<void(TrainOptions&)>& adjust = {}) {
  const fs::path one = fresh_dir(device + "_one"), two = fresh_dir(device + "_two");
  TrainOptions alone_options = tiny_run(one, 1, 4), pair_options = tiny_run(two, 2, 2);
  alone_options.device = pair_options.device = device;
  if (adjust) {
    adjust(alone_options);
    adjust(pair_options);
  }
  const TrainingOutcome alone = run_training(alone_options);
  pair = run_training(pair_options);
  EXPECT_EQ(alone.steps, alone_options.max_steps);
  EXPECT_EQ(pair.steps, alone_options.max_steps);
  EXPECT_EQ(pair.adapter_dir, two.string());

  // The reference pass is shared out by batch and summed: the same numbers, bit for bit
  // (each pair is computed by one worker exactly as alone, and the others add zeros).
  EXPECT_EQ(read_json(two / "reference_logps.json")["logps"], read_json(one / "reference_logps.json")["logps"]);

  // The same micro-batches and dropout masks, but the gradients of the four micro-batches are
  // added in another order (two per worker in f32, then the workers' sums: in f64 through host
  // memory, in f32 through NCCL), so each step's gradient differs by f32 rounding (~1e-7 relative). Adam divides each gradient element by its
  // own running scale, so an element whose gradient is near zero can move by up to the learning
  // rate either way: the adapters differ by ~1e-5 of their norm after a few steps (tolerance
  // 1e-4), and the metrics, smooth functions of the adapter, by far less (tolerance 1e-5 of
  // max(|value|, 1), as margins near zero have no meaningful relative error).
  const std::vector<nlohmann::json> metrics_one = read_jsonl(one / "metrics.jsonl");
  const std::vector<nlohmann::json> metrics_two = read_jsonl(two / "metrics.jsonl");
  ASSERT_EQ(metrics_two.size(), metrics_one.size());
  for (size_t i = 0; i < metrics_one.size(); ++i) {
    for (const char* key : {"loss", "grad_norm", "rewards/margins", "eval_loss", "eval_rewards/accuracies"}) {
      if (!metrics_one[i].contains(key)) continue;
      ASSERT_TRUE(metrics_two[i].contains(key)) << key << " at line " << i;
      EXPECT_LT(scaled_difference(metrics_two[i][key].get<double>(), metrics_one[i][key].get<double>()), 1e-5)
          << key << " at line " << i << ": " << metrics_two[i][key] << " vs " << metrics_one[i][key];
    }
  }
  ASSERT_TRUE(alone.last_eval.count("eval_loss"));
  EXPECT_LT(scaled_difference(pair.last_eval.at("eval_loss"), alone.last_eval.at("eval_loss")), 1e-5);

  // The adapters rank 0 wrote.
  SafetensorsFile adapter_one((one / "adapter_model.safetensors").string());
  SafetensorsFile adapter_two((two / "adapter_model.safetensors").string());
  ASSERT_EQ(adapter_two.tensors().size(), adapter_one.tensors().size());
  for (const TensorInfo& a : adapter_one.tensors()) {
    const TensorInfo* b = adapter_two.find(a.name);
    ASSERT_TRUE(b != nullptr) << a.name;
    ASSERT_EQ(a.dtype, DType::f32) << a.name;
    ASSERT_EQ(b->shape, a.shape) << a.name;
    const float* x = reinterpret_cast<const float*>(a.data);
    const float* y = reinterpret_cast<const float*>(b->data);
    double difference = 0, norm = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      difference += double(x[i] - y[i]) * double(x[i] - y[i]);
      norm += double(x[i]) * double(x[i]);
    }
    EXPECT_LE(std::sqrt(difference), 1e-4 * std::sqrt(norm)) << a.name;
  }
}

}  // namespace cst::data_parallel_test
