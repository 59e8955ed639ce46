// The training loop end to end on tiny models: bit-identical resume, the real dataset through a few
// steps, and the bad inputs a user can give (each a clear error, nothing half-written).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/model_file.h"
#include "train/checkpoint.h"
#include "train/demo_assets.h"
#include "train/objective.h"
#include "train/trainer.h"
#include "tests/test_support.h"

namespace cst {
namespace {
namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) { return testing_support::fresh_test_dir("trainer_" + name); }

const demo::DemoFiles& demo_files() { return testing_support::tiny_demo_files(); }

TrainOptions tiny_run(const fs::path& output_dir) {
  TrainOptions options;
  options.model_path = demo_files().model_bin;
  options.data_path = demo_files().train_jsonl;
  options.output_dir = output_dir.string();
  options.device = "cpu";
  options.system_prompts = {demo::kHarmlessSystem, demo::kUncensoredSystem};
  options.lora_r = 4;
  options.lora_alpha = 8;
  options.learning_rate = 1e-3;
  options.per_device_train_batch_size = 2;
  options.gradient_accumulation_steps = 2;
  options.max_length = 128;
  options.max_prompt_length = 96;
  options.max_steps = 4;
  return options;
}

std::vector<nlohmann::json> read_metrics(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// Trains 4 steps straight and 2 more resumed from the straight run's checkpoint-2; `configure`
// sets both runs' options. Returns the two runs' metrics.jsonl lines.
std::pair<std::vector<nlohmann::json>, std::vector<nlohmann::json>> straight_and_resumed(
    const std::string& name, const std::function<void(TrainOptions&)>& configure) {
  const fs::path straight = fresh_dir(name + "_straight"), resumed = fresh_dir(name + "_resumed");
  TrainOptions options = tiny_run(straight);
  options.save_steps = 2;
  configure(options);
  run_training(options);
  EXPECT_TRUE(fs::exists(straight / "checkpoint-2" / "optimizer.safetensors"));

  TrainOptions resume = tiny_run(resumed);
  configure(resume);
  resume.resume_from_checkpoint = (straight / "checkpoint-2").string();
  run_training(resume);
  return {read_metrics(straight), read_metrics(resumed)};
}

TEST(Trainer, ResumeContinuesWithBitIdenticalLosses) {
  auto [first, second] = straight_and_resumed("dropout", [](TrainOptions& options) {
    options.lora_dropout = 0.1;
    options.disable_dropout = false;  // the dropout masks must be reproduced too
  });
  ASSERT_EQ(first.size(), 4u);
  ASSERT_EQ(second.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(second[i]["step"], first[i + 2]["step"]);
    // Exact equality: the same data order, adapter, optimizer state and dropout masks.
    EXPECT_EQ(second[i]["loss"].get<double>(), first[i + 2]["loss"].get<double>()) << "step " << i + 3;
    EXPECT_EQ(second[i]["grad_norm"].get<double>(), first[i + 2]["grad_norm"].get<double>());
  }
}

TEST(Trainer, BcoPairResumesItsRunningRewardMean) {
  // Evaluation after every step moves the running mean too, before the checkpoint saves it.
  auto [first, second] = straight_and_resumed("bco_pair", [](TrainOptions& options) {
    options.loss_type = "bco_pair";
    options.eval_split = 0.05;
    options.eval_steps = 1;
  });
  // Per step: a training line, then an evaluation line.
  ASSERT_EQ(first.size(), 8u);
  ASSERT_EQ(second.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const nlohmann::json &straight = first[i + 4], &resumed = second[i];
    EXPECT_EQ(resumed["step"], straight["step"]);
    const char* loss = straight.contains("eval_loss") ? "eval_loss" : "loss";
    // Exact equality: a running mean restarted at zero would shift every loss after the resume.
    EXPECT_EQ(resumed[loss].get<double>(), straight[loss].get<double>()) << loss << " at step " << straight["step"];
  }
}

// --save_total_limit 2 keeps the newest two checkpoints; --resume_from_checkpoint latest then
// continues from the newest one, in the same run directory.
TEST(Trainer, KeepsTheNewestCheckpointsAndResumesFromTheLatest) {
  const fs::path run = fresh_dir("checkpoint_limit");
  TrainOptions options = tiny_run(run);
  options.max_steps = 6;
  options.save_steps = 1;
  options.save_total_limit = 2;
  TrainOptions first = options;
  first.max_steps = 4;
  run_training(first);
  EXPECT_EQ(list_checkpoints(run.string()),
            (std::vector<std::string>{(run / "checkpoint-3").string(), (run / "checkpoint-4").string()}));

  TrainOptions resume = options;
  resume.resume_from_checkpoint = "latest";
  EXPECT_EQ(run_training(resume).steps, 6);
  std::vector<long> logged_steps;
  for (const nlohmann::json& line : read_metrics(run)) logged_steps.push_back(line["step"].get<long>());
  EXPECT_EQ(logged_steps, (std::vector<long>{1, 2, 3, 4, 5, 6})) << "the resumed run starts after checkpoint-4";
  EXPECT_EQ(list_checkpoints(run.string()),
            (std::vector<std::string>{(run / "checkpoint-5").string(), (run / "checkpoint-6").string()}));
}

TEST(Trainer, CheckpointListingSkipsWhatIsNotACheckpoint) {
  const fs::path run = fresh_dir("checkpoint_listing");
  for (const char* name : {"checkpoint-10", "checkpoint-9", "checkpoint-11.tmp", "checkpoint-x", "checkpoint-", "other"})
    fs::create_directories(run / name);
  std::ofstream(run / "checkpoint-12") << "a file, not a directory";
  EXPECT_EQ(list_checkpoints(run.string()),
            (std::vector<std::string>{(run / "checkpoint-9").string(), (run / "checkpoint-10").string()}));
  EXPECT_EQ(resolve_checkpoint("latest", run.string()), (run / "checkpoint-10").string());
  EXPECT_EQ(resolve_checkpoint("some/dir", run.string()), "some/dir");
  const fs::path empty = fresh_dir("checkpoint_listing_empty");
  EXPECT_THROW(resolve_checkpoint("latest", empty.string()), Error);
  remove_old_checkpoints(run.string(), 1);
  EXPECT_EQ(list_checkpoints(run.string()), (std::vector<std::string>{(run / "checkpoint-10").string()}));
  EXPECT_TRUE(fs::exists(run / "checkpoint-11.tmp")) << "only checkpoints are removed";
}

TEST(Trainer, WritesThePeftAdapterAndRunFiles) {
  const fs::path run = fresh_dir("files");
  TrainOptions options = tiny_run(run);
  options.max_steps = 2;
  options.eval_split = 0.2;
  TrainingOutcome outcome = run_training(options);
  EXPECT_EQ(outcome.steps, 2);
  for (const char* file : {"args.json", "metrics.jsonl", "adapter_config.json", "adapter_model.safetensors",
                           "training_curves.svg", "checkpoint-2/trainer_state.json"})
    EXPECT_TRUE(fs::exists(run / file)) << file;
  EXPECT_TRUE(outcome.last_eval.count("eval_loss"));
  EXPECT_TRUE(outcome.last_train.count("rewards/accuracies"));
  // The process's peak size: at least the model and data it read, well under this machine's memory.
  ASSERT_TRUE(outcome.last_train.count("memory_gib"));
  EXPECT_GT(outcome.last_train.at("memory_gib"), 0.001);
  EXPECT_LT(outcome.last_train.at("memory_gib"), 64.0);
}

TEST(Trainer, RealDatasetRunsAFewSteps) {
  const fs::path dataset = fs::path(CST_SOURCE_DIR) / ".." / "shared" / "data" / "configurable-system-prompt-multitask.json";
  if (!fs::exists(dataset)) GTEST_SKIP() << "the real dataset is not at " << dataset;
  // A tiny random model with the real (OpenHermes-style ChatML) tokenizer: vocab 32002.
  const fs::path hf = fresh_dir("real_model");
  std::map<std::string, std::string> tokenizer_files;
  for (const char* name : {"tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"}) {
    std::ifstream in(fs::path(CST_SOURCE_DIR) / "tests/fixtures/tokenizer/chatml" / name, std::ios::binary);
    tokenizer_files[name] = std::string(std::istreambuf_iterator<char>(in), {});
  }
  demo::write_tiny_model(hf.string(), 32002, 32000, tokenizer_files, 7);
  const fs::path run = fresh_dir("real_run");
  TrainOptions options;
  options.model_path = hf.string();
  options.data_path = dataset.string();
  options.output_dir = run.string();
  options.device = "cpu";
  options.max_steps = 2;
  options.gradient_accumulation_steps = 1;
  options.per_device_train_batch_size = 1;
  options.max_length = 192;
  options.max_prompt_length = 64;
  TrainingOutcome outcome = run_training(options);
  EXPECT_EQ(outcome.steps, 2);
  EXPECT_EQ(read_metrics(run).size(), 2u);
  EXPECT_TRUE(std::isfinite(outcome.last_train.at("loss")));
}

// CST evaluation pairs come in equal numbers under each system prompt (the split is by prompt, and
// every prompt appears under both), so with one pair per evaluation batch the overall reward
// accuracy is exactly the mean of the two per-system-prompt accuracies.
TEST(Trainer, EvaluationReportsAccuracyPerSystemPrompt) {
  const fs::path run = fresh_dir("per_system");
  TrainOptions options = tiny_run(run);
  options.max_steps = 2;
  options.eval_split = 0.1;
  options.per_device_eval_batch_size = 1;
  const Metrics eval = run_training(options).last_eval;
  ASSERT_TRUE(eval.count("eval_rewards/accuracies/system_0") && eval.count("eval_rewards/accuracies/system_1"));
  EXPECT_FALSE(eval.count("eval_rewards/accuracies/system_2"));
  const double harmless = eval.at("eval_rewards/accuracies/system_0"), uncensored = eval.at("eval_rewards/accuracies/system_1");
  EXPECT_NEAR(eval.at("eval_rewards/accuracies"), (harmless + uncensored) / 2, 1e-12);
  std::ifstream legend_file(run / "eval_system_prompts.json");
  const nlohmann::json legend = nlohmann::json::parse(legend_file);
  EXPECT_EQ(legend, (nlohmann::json{{"system_0", demo::kHarmlessSystem}, {"system_1", demo::kUncensoredSystem}}));
}

// A model whose tokenizer comes as tokenizer.json alone (no tokenizer.model), through model.bin.
TEST(Trainer, ModelWithOnlyTokenizerJsonTrains) {
  const fs::path hf = fresh_dir("json_tokenizer_model");
  std::map<std::string, std::string> tokenizer_files;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    std::ifstream in(fs::path(CST_SOURCE_DIR) / "tests/fixtures/tokenizer/json/legacy" / name, std::ios::binary);
    tokenizer_files[name] = std::string(std::istreambuf_iterator<char>(in), {});
  }
  demo::write_tiny_model(hf.string(), demo::kSentencepieceVocab + 2, demo::kSentencepieceVocab, tokenizer_files, 7);
  convert_hf_directory(hf.string(), (hf / "model.bin").string());
  TrainOptions options = tiny_run(fresh_dir("json_tokenizer_run"));
  options.model_path = (hf / "model.bin").string();
  options.max_steps = 1;
  EXPECT_EQ(run_training(options).steps, 1);
}

// Runs training expecting a cst::Error whose message contains `expected`.
void expect_training_error(const TrainOptions& options, const std::string& expected) {
  try {
    run_training(options);
    ADD_FAILURE() << "expected an error containing '" << expected << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
  }
}

TEST(TrainerErrors, EmptyDataset) {
  const fs::path dir = fresh_dir("empty");
  std::ofstream(dir / "empty.jsonl").close();
  TrainOptions options = tiny_run(dir / "run");
  options.data_path = (dir / "empty.jsonl").string();
  expect_training_error(options, "the dataset is empty");
  EXPECT_FALSE(fs::exists(dir / "run" / "adapter_model.safetensors"));
}

TEST(TrainerErrors, AllRowsSkipped) {
  const fs::path dir = fresh_dir("nulls");
  std::ofstream(dir / "nulls.jsonl") << "{\"prompt\": null, \"chosen\": \"a\", \"rejected\": \"b\"}\n";
  TrainOptions options = tiny_run(dir / "run");
  options.data_path = (dir / "nulls.jsonl").string();
  expect_training_error(options, "is null");
  options.skip_bad_rows = true;
  expect_training_error(options, "no training pairs");
}

TEST(TrainerErrors, MissingColumn) {
  TrainOptions options = tiny_run(fresh_dir("missing_column"));
  options.rejected_column = "dispreferred";
  expect_training_error(options, "dispreferred");
}

TEST(TrainerErrors, ModelAndTokenizerVocabularyMismatch) {
  const fs::path hf = fresh_dir("small_vocab");
  std::map<std::string, std::string> tokenizer_files;
  for (const char* name : {"tokenizer.model", "tokenizer_config.json"}) {
    std::ifstream in(fs::path(demo_files().hf_directory) / name, std::ios::binary);
    tokenizer_files[name] = std::string(std::istreambuf_iterator<char>(in), {});
  }
  demo::write_tiny_model(hf.string(), 300, 2, tokenizer_files, 3);  // the tokenizer has 514 tokens
  TrainOptions options = tiny_run(fresh_dir("small_vocab_run"));
  options.model_path = hf.string();
  expect_training_error(options, "model/tokenizer mismatch");
}

TEST(TrainerErrors, UnwritableOutputDirectory) {
  const fs::path dir = fresh_dir("unwritable");
  std::ofstream(dir / "a_file") << "x";
  TrainOptions options = tiny_run(dir / "a_file" / "run");  // a directory inside a regular file
  expect_training_error(options, "--output_dir");
}

// A NaN in the model's weights would make every log-prob NaN: the run stops as the weights load,
// naming the tensor, and writes no adapter.
TEST(TrainerErrors, NaNInTheModelStopsTheRun) {
  const fs::path model = fresh_dir("nan_model");
  testing_support::copy_with_a_nan(demo_files().hf_directory, model, "model.safetensors", "model.norm.weight");
  TrainOptions options = tiny_run(fresh_dir("nan_run"));
  options.model_path = model.string();
  expect_training_error(options, "the model: tensor 'model.norm.weight' holds nan at index 0");
  EXPECT_FALSE(fs::exists(fs::path(options.output_dir) / "adapter_model.safetensors"));
}

}  // namespace
}  // namespace cst

namespace cst {
namespace {

TEST(Trainer, DryRunDumpsExactlyTheTokenizedPairs) {
  const fs::path run = fresh_dir("dry_run");
  TrainOptions options = tiny_run(run);
  options.dry_run = true;
  options.dump_tokenized = (run / "tokens.jsonl").string();
  run_training(options);
  std::ifstream in(options.dump_tokenized);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u * demo::kTrainRows) << "CST: two pairs per row";
  EXPECT_EQ(lines[0]["system"], demo::kHarmlessSystem);
  EXPECT_EQ(lines[1]["system"], demo::kUncensoredSystem);
  for (const nlohmann::json& line : lines)
    for (const char* side : {"chosen", "rejected"})
      ASSERT_EQ(line[std::string(side) + "_input_ids"].size(), line[std::string(side) + "_completion_mask"].size());
  EXPECT_FALSE(fs::exists(run / "adapter_model.safetensors")) << "a dry run trains nothing";
}

TEST(Trainer, PrecomputedReferenceGivesTheSameLosses) {
  const fs::path live = fresh_dir("reference_live"), cached = fresh_dir("reference_cached");
  TrainOptions options = tiny_run(live);
  options.max_steps = 2;
  run_training(options);
  options.output_dir = cached.string();
  options.precompute_ref_log_probs = true;
  run_training(options);
  EXPECT_TRUE(fs::exists(cached / "reference_logps.json"));
  std::vector<nlohmann::json> a = read_metrics(live), b = read_metrics(cached);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)  // packed batches of different composition: rounding only
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-5);

  // Other data in the same run directory: the cache does not fit and is recomputed. At the first
  // step the adapter's B is 0, so the policy equals the reference and the loss is exactly ln 2.
  options.chosen_column = "rejected";
  options.rejected_column = "chosen";
  options.max_steps = 1;
  run_training(options);
  std::vector<nlohmann::json> swapped = read_metrics(cached);
  EXPECT_NEAR(swapped.back()["loss"].get<double>(), std::log(2.0), 1e-6);
}

TEST(TrainOptions, FlagsConfigFileAndErrors) {
  const fs::path dir = fresh_dir("options");
  std::ofstream(dir / "run.json") << R"({"beta": 0.25, "lora_target_modules": ["q_proj", "v_proj"], "max_steps": 7})";
  std::vector<std::string> words = {"model.bin", "data.parquet", "--config", (dir / "run.json").string(),
                                    "--beta", "0.5", "--system_prompts", "A", "B", "--packing", "false"};
  std::vector<char*> argv;
  for (std::string& word : words) argv.push_back(word.data());
  TrainOptions options;
  ASSERT_TRUE(parse_train_options(int(argv.size()), argv.data(), options));
  EXPECT_EQ(options.model_path, "model.bin");
  EXPECT_EQ(options.data_path, "data.parquet");
  EXPECT_EQ(options.beta, 0.5) << "the command line overrides --config";
  EXPECT_EQ(options.max_steps, 7);
  EXPECT_EQ(options.lora_target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(options.system_prompts, (std::vector<std::string>{"A", "B"}));
  EXPECT_FALSE(options.packing);
  EXPECT_NO_THROW(validate_train_options(options));

  auto parse_error = [](std::vector<std::string> words) {
    std::vector<char*> argv;
    for (std::string& word : words) argv.push_back(word.data());
    TrainOptions options;
    try {
      parse_train_options(int(argv.size()), argv.data(), options);
      validate_train_options(options);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  EXPECT_NE(parse_error({"m", "d", "--no_such_flag", "1"}).find("--no_such_flag"), std::string::npos);
  EXPECT_NE(parse_error({"m", "d", "--beta", "abc"}).find("--beta"), std::string::npos);
  EXPECT_NE(parse_error({"m", "d", "--loss_type", "kto"}).find("--loss_type"), std::string::npos);
  EXPECT_EQ(parse_error({"m", "d", "--loss_type", "aot_pair"}), "");
  EXPECT_NE(parse_error({"m", "d", "--loss_type", "bco_pair", "--num_processes", "2"}).find("bco_pair"), std::string::npos);
  EXPECT_NE(parse_error({"m", "d", "--system_prompts", "only one"}).find("--system_prompts"), std::string::npos);
  for (const char* mode : {"recompute_dq", "ordered_dq", "atomic_dq"})
    EXPECT_EQ(parse_error({"m", "d", "--attention_backward", mode}), "") << mode;
  EXPECT_NE(parse_error({"m", "d", "--attention_backward", "deterministic"}).find("ordered_dq"), std::string::npos);
  EXPECT_NE(parse_error({"m", "d", "--attention_backward", "atomic"}).find("--attention_backward"), std::string::npos);
  EXPECT_NE(parse_error({"m"}).find("missing data path"), std::string::npos);
  EXPECT_NE(train_options_help().find("--gradient_accumulation_steps"), std::string::npos);
}

TEST(TrainOptions, TargetModulesAsPeftNamesThem) {
  EXPECT_EQ(parse_target_modules({"all-linear"}),
            std::vector<Projection>(kAllProjections.begin(), kAllProjections.end()));
  EXPECT_EQ(parse_target_modules({"v_proj", "q"}), (std::vector<Projection>{Projection::v, Projection::q}));
  EXPECT_THROW(parse_target_modules({"q_proj", "q"}), Error);             // the same module twice
  EXPECT_THROW(parse_target_modules({"all-linear", "q_proj"}), Error);    // all-linear stands alone
  EXPECT_THROW(parse_target_modules({}), Error);
}

TEST(Objective, NonFiniteLogProbsAreRefused) {
  ObjectiveConfig config = objective_config_from_names("sigmoid", 0.1, 0.0, 0.0, false);
  SequenceSums policy{{std::nan(""), -3.0}, {0.0, 0.0}, {2, 2}};
  std::vector<int32_t> labels = {5, 6, -1, 7, 8, -1}, cu_seqlens = {0, 3, 6};
  EXPECT_THROW(compute_objective(config, policy, {-1.0, -1.0}, labels, cu_seqlens, 10, 1.0), Error);
}

}  // namespace
}  // namespace cst
