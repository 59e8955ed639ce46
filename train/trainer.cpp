#include "train/trainer.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include "data/batch.h"
#include "data/pair_tokenizer.h"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/nvtx.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/model_session.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace cst {
namespace fs = std::filesystem;
namespace {

LoraConfig lora_config_from(const TrainOptions& o) {
  LoraConfig config;
  config.r = o.lora_r;
  config.alpha = float(o.lora_alpha);
  config.dropout = o.disable_dropout ? 0.0f : float(o.lora_dropout);
  config.use_rslora = o.use_rslora;
  config.targets = parse_target_modules(o.lora_target_modules);
  return config;
}

// Text written atomically (temp file + rename, model/safetensors.h).
void write_text_atomically(const fs::path& path, const std::string& text) {
  write_file_atomically(path.string(), {{text.data(), text.size()}});
}

// The output directory must be creatable and writable before any work starts.
void prepare_output_dir(const TrainOptions& options) {
  std::error_code error;
  fs::create_directories(options.output_dir, error);
  if (error) fail("cannot create --output_dir ", options.output_dir, ": ", error.message());
  const fs::path probe = fs::path(options.output_dir) / ".write_test";
  std::ofstream out(probe);
  if (!out) fail("--output_dir ", options.output_dir, " is not writable");
  out.close();
  fs::remove(probe);
}

void dump_tokenized(const std::string& path, const std::vector<TokenizedPair>& pairs) {
  const fs::path temporary = path + ".tmp";
  {
    std::ofstream out(temporary);
    if (!out) fail("--dump_tokenized: cannot write ", path);
    for (const TokenizedPair& pair : pairs) {
      nlohmann::json line = {{"example_index", pair.example_index},
                             {"system", pair.system},
                             {"prompt_length", pair.prompt_length},
                             {"truncated", pair.truncated},
                             {"chosen_input_ids", pair.chosen.ids},
                             {"chosen_completion_mask", pair.chosen.completion_mask},
                             {"rejected_input_ids", pair.rejected.ids},
                             {"rejected_completion_mask", pair.rejected.completion_mask}};
      out << line.dump() << "\n";
    }
    if (!out.flush()) fail("--dump_tokenized: cannot write ", path);
  }
  fs::rename(temporary, path);
}

// FNV-1a of an example's conversation: the same on every platform. The earlier turns (each role and
// content closed by a zero byte) come before the prompt, so a single-turn example hashes its prompt
// alone.
uint64_t conversation_key(const PreferenceExample& example, uint64_t seed) {
  uint64_t key = 0xcbf29ce484222325ull ^ seed;
  auto feed = [&](const std::string& text) {
    for (unsigned char c : text) key = (key ^ c) * 0x100000001b3ull;
  };
  for (const ChatTurn& turn : example.history) {
    for (const std::string* text : {&turn.role, &turn.content}) {
      feed(*text);
      key *= 0x100000001b3ull;  // the zero byte: key ^ 0 == key
    }
  }
  feed(example.prompt);
  return key;
}

// Splits off a deterministic fraction of the pairs for evaluation, by conversation: every pair of a
// prompt (the CST flips of a row, and rows repeating a conversation under another system prompt)
// lands on the same side, so evaluation prompts are never trained on.
void split_eval(std::vector<TokenizedPair>& train, std::vector<TokenizedPair>& eval,
                const std::vector<PreferenceExample>& examples, double fraction, uint64_t seed) {
  if (fraction <= 0) return;
  std::vector<TokenizedPair> kept;
  for (TokenizedPair& pair : train) {
    uint64_t key = conversation_key(examples[size_t(pair.example_index)], seed);
    key ^= key >> 31;  // splitmix64's finaliser: uniform bits from any key
    key *= 0xBF58476D1CE4E5B9ull;
    key ^= key >> 29;
    const double u = double(key >> 11) * 0x1.0p-53;
    (u < fraction ? eval : kept).push_back(std::move(pair));
  }
  train = std::move(kept);
}

// --profile_steps A:B -> {A, B}; empty -> {0, -1} (never).
std::pair<long, long> parse_profile_steps(const std::string& text) {
  if (text.empty()) return {0, -1};
  const size_t colon = text.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument(text);
    size_t used_first = 0, used_last = 0;
    const long first = std::stol(text.substr(0, colon), &used_first);
    const long last = std::stol(text.substr(colon + 1), &used_last);
    if (used_first != colon || used_last != text.size() - colon - 1 || first < 1 || last < first)
      throw std::invalid_argument(text);
    return {first, last};
  } catch (const std::exception&) {
    fail("--profile_steps must be A:B with 1 <= A <= B (steps to profile), got '", text, "'");
  }
}

// Memory the run holds, in GiB: on the GPU the device memory in use, on the CPU the peak
// resident size of this process.
double memory_gib(Device device) {
  double bytes = 0;
  if (device == Device::cuda) {
    CST_ON_CUDA(bytes = double(cuda::memory_in_use()));
  } else {
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    bytes = double(usage.ru_maxrss) * 1024.0;  // Linux reports kilobytes
  }
  return bytes / double(1ull << 30);
}

uint64_t micro_batch_seed(uint64_t seed, long step, int micro) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + uint64_t(step) * 0xD1B54A32D192ED03ull + uint64_t(micro);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

// Each worker's share of the batches (train/distributed.h): of every n = workers x count batches,
// worker r takes batches r*count .. r*count + count-1.
struct Share {
  int before = 0, own = 0, after = 0;  // batches to skip, to take, to skip
};
Share share_of(const WorkerGroup& group, int count) {
  return {group.rank() * count, count, (group.size() - 1 - group.rank()) * count};
}

// Sums MetricSums over the workers.
MetricSums summed(WorkerGroup& group, const MetricSums& sums) {
  std::vector<double> values = sums.values();
  group.sum(values);
  MetricSums total;
  total.add_values(values);
  return total;
}

class Trainer {
 public:
  Trainer(const TrainOptions& options, WorkerGroup& group) : options_(options), group_(group) {}
  TrainingOutcome run();

 private:
  void load_data();
  std::vector<double> reference_logps(const Batch& batch);
  void precompute_reference();
  void find_eval_systems(bool report);
  std::vector<std::vector<int64_t>> evaluation_batches(size_t count) const;
  std::string reference_fingerprint() const;
  ObjectiveResult run_micro_batch(const Batch& batch, long step, int micro, bool train);
  Metrics evaluate();
  TokenSpans spans(const Batch& batch) const {
    return {batch.tokens, batch.positions, batch.labels, batch.cu_seqlens};
  }

  TrainOptions options_;
  WorkerGroup& group_;
  ModelSession session_;
  ObjectiveConfig objective_;
  AttentionBackward attention_backward_ = kDefaultAttentionBackward;  // --attention_backward
  std::vector<TokenizedPair> train_pairs_, eval_pairs_;
  std::vector<std::string> eval_systems_;  // see find_eval_systems
  std::unique_ptr<LoraAdapter> lora_;
  std::unique_ptr<Transformer> transformer_;
  std::vector<std::array<double, 2>> reference_cache_;  // per train pair: chosen, rejected sums
  RewardRunningMean reward_mean_;  // bco_pair: updated by every micro-batch, evaluation included
  int64_t tokens_processed_ = 0;
};

void Trainer::load_data() {
  PreferenceOptions preference = preference_options_from(options_);
  TokenizeOptions tokenize = tokenize_options_from(options_);
  PreferenceData data = load_preference_data(options_.data_path, *session_.tokenizer,
                                             session_.chat_template, preference, tokenize);
  const bool report = group_.is_main();
  if (report && data.report.skipped_rows > 0)
    std::fprintf(stderr, "skipped %lld rows with null or missing cells (--skip_bad_rows)\n",
                 (long long)data.report.skipped_rows);
  if (data.pairs.empty())
    fail(options_.data_path, ": the dataset yields no training pairs (", data.report.rows,
         " rows, ", data.report.skipped_rows, " skipped, ", data.stats.dropped_pairs, " dropped)");
  if (report) std::fprintf(stderr, "%s", format_dataset_stats(data.stats, tokenize).c_str());
  train_pairs_ = std::move(data.pairs);
  if (!options_.eval_file.empty()) {
    PreferenceData eval = load_preference_data(options_.eval_file, *session_.tokenizer,
                                               session_.chat_template, preference, tokenize);
    eval_pairs_ = std::move(eval.pairs);
  } else {
    split_eval(train_pairs_, eval_pairs_, data.examples, options_.eval_split, uint64_t(options_.seed));
    if (train_pairs_.empty()) fail("--eval_split ", options_.eval_split, " leaves no training pairs");
  }
  if (report && !eval_pairs_.empty())
    std::fprintf(stderr, "evaluation: %zu pairs, training: %zu pairs\n", eval_pairs_.size(), train_pairs_.size());
  find_eval_systems(report);
}

// The distinct system prompts of the evaluation pairs, in order of first appearance, when there
// are few enough to name one metric each (CST data has two): eval_rewards/accuracies/system_<k>
// then shows whether each system prompt controls the model as training goes.
void Trainer::find_eval_systems(bool report) {
  constexpr size_t kMaxSystems = 8;
  std::map<std::string, int64_t> pairs_per_system;
  for (const TokenizedPair& pair : eval_pairs_)
    if (pairs_per_system[pair.system]++ == 0) eval_systems_.push_back(pair.system);
  if (objective_.objective != Objective::preference || eval_systems_.size() < 2 ||
      eval_systems_.size() > kMaxSystems) {
    eval_systems_.clear();
    return;
  }
  for (size_t k = 0; report && k < eval_systems_.size(); ++k) {
    const std::string& system = eval_systems_[k];
    std::fprintf(stderr, "  system_%zu (%lld pairs): \"%s\"\n", k, (long long)pairs_per_system[system],
                 system.size() > 70 ? (system.substr(0, 67) + "...").c_str() : system.c_str());
  }
}

std::vector<double> Trainer::reference_logps(const Batch& batch) {
  std::vector<double> reference(batch.cu_seqlens.size() - 1, 0.0);
  if (objective_.reference_free || objective_.objective == Objective::sft) return reference;
  if (!reference_cache_.empty()) {
    for (size_t i = 0; i < batch.pair_indices.size(); ++i) {
      reference[2 * i] = reference_cache_[size_t(batch.pair_indices[i])][0];
      reference[2 * i + 1] = reference_cache_[size_t(batch.pair_indices[i])][1];
    }
    return reference;
  }
  ForwardOptions options;
  options.adapters_enabled = false;
  TokenLogps logps = transformer_->forward(spans(batch), options);
  tokens_processed_ += int64_t(batch.tokens.size());
  return sum_per_sequence(logps.logps, logps.logit_sums, batch.labels, batch.cu_seqlens).logps;
}

// What the cached reference log-probs depend on: the model file and every token of every pair.
// A cache with another fingerprint (other model, data, template or truncation) is recomputed.
std::string Trainer::reference_fingerprint() const {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a over the model's size and the pairs' tokens
  auto mix = [&](uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) hash = (hash ^ ((value >> (8 * byte)) & 0xff)) * 0x100000001b3ull;
  };
  std::error_code error;
  mix(fs::is_directory(options_.model_path) ? 0 : uint64_t(fs::file_size(options_.model_path, error)));
  for (const TokenizedPair& pair : train_pairs_)
    for (const TokenizedSequence* sequence : {&pair.chosen, &pair.rejected}) {
      mix(sequence->ids.size());
      for (size_t t = 0; t < sequence->ids.size(); ++t) mix(uint64_t(sequence->ids[t]) << 1 | sequence->completion_mask[t]);
    }
  return options_.model_path + ":" + std::to_string(hash);
}

// --precompute_ref_log_probs: one pass over the training pairs with the adapters off; the sums are
// cached in the run directory and reused when the same run resumes.
void Trainer::precompute_reference() {
  const fs::path cache_path = fs::path(options_.output_dir) / "reference_logps.json";
  const std::string fingerprint = reference_fingerprint();
  if (fs::exists(cache_path)) {
    std::ifstream in(cache_path);
    nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
    const bool usable = json.is_object() && json.value("fingerprint", "") == fingerprint &&
                        json["logps"].is_array() && json["logps"].size() == train_pairs_.size();
    if (usable) {
      for (const auto& item : json["logps"]) {
        if (!item.is_array() || item.size() != 2 || !item[0].is_number() || !item[1].is_number())
          fail(cache_path.string(), ": malformed entry ", item.dump(), " (delete the file to recompute)");
        reference_cache_.push_back({item[0].get<double>(), item[1].get<double>()});
      }
      if (group_.is_main())
        std::fprintf(stderr, "reference log-probs: read %zu pairs from %s\n", reference_cache_.size(), cache_path.string().c_str());
      return;
    }
    if (group_.is_main())
      std::fprintf(stderr, "reference log-probs: %s belongs to another model or data; recomputing\n", cache_path.string().c_str());
  }
  // Chosen and rejected sums per pair; each worker fills its batches, the sum over workers fills all.
  std::vector<double> sums(2 * train_pairs_.size(), 0.0);
  for (const std::vector<int64_t>& indices : evaluation_batches(train_pairs_.size())) {
    Batch batch = make_batch(train_pairs_, indices, options_.packing, session_.tokenizer->pad_id());
    const std::vector<double> batch_sums = reference_logps(batch);
    for (size_t i = 0; i < indices.size(); ++i) {
      sums[2 * size_t(indices[i])] = batch_sums[2 * i];
      sums[2 * size_t(indices[i]) + 1] = batch_sums[2 * i + 1];
    }
  }
  group_.sum(sums);
  nlohmann::json logps = nlohmann::json::array();
  for (size_t pair = 0; pair < train_pairs_.size(); ++pair) {
    reference_cache_.push_back({sums[2 * pair], sums[2 * pair + 1]});
    logps.push_back({sums[2 * pair], sums[2 * pair + 1]});
  }
  if (!group_.is_main()) return;
  write_text_atomically(cache_path, nlohmann::json{{"fingerprint", fingerprint}, {"logps", logps}}.dump() + "\n");
  std::fprintf(stderr, "reference log-probs: computed for %zu pairs, cached in %s\n", reference_cache_.size(), cache_path.string().c_str());
}

// This worker's share of the batches of per_device_eval_batch_size consecutive pairs out of
// `count` (every worker's share, when it works alone).
std::vector<std::vector<int64_t>> Trainer::evaluation_batches(size_t count) const {
  const size_t batch_pairs = size_t(options_.per_device_eval_batch_size);
  std::vector<std::vector<int64_t>> batches;
  for (size_t begin = 0, number = 0; begin < count; begin += batch_pairs, ++number) {
    if (number % size_t(group_.size()) != size_t(group_.rank())) continue;
    std::vector<int64_t> indices;
    for (size_t i = begin; i < std::min(count, begin + batch_pairs); ++i) indices.push_back(int64_t(i));
    batches.push_back(std::move(indices));
  }
  return batches;
}

ObjectiveResult Trainer::run_micro_batch(const Batch& batch, long step, int micro, bool train) {
  std::vector<double> reference = reference_logps(batch);
  ForwardOptions options;
  options.save_for_backward = train;
  options.recompute_activations = options_.gradient_checkpointing;
  options.attention_backward = attention_backward_;
  options.dropout_seed = micro_batch_seed(uint64_t(options_.seed), step, micro);
  TokenLogps policy = transformer_->forward(spans(batch), options);
  tokens_processed_ += int64_t(batch.tokens.size());
  SequenceSums sums = sum_per_sequence(policy.logps, policy.logit_sums, batch.labels, batch.cu_seqlens);
  // Log-probs or a loss that are not finite mean the run has diverged: say where, and stop.
  const auto stop = [&](const std::string& what) {
    fail(what, " at step ", step + 1, " (micro-batch ", micro + 1,
         "); training stopped, the last good checkpoint is kept in ", options_.output_dir);
  };
  ObjectiveResult result;
  try {
    result = compute_objective(objective_, sums, reference, batch.labels, batch.cu_seqlens,
                               session_.config().vocab_size,
                               1.0 / (options_.gradient_accumulation_steps * group_.size()), &reward_mean_);
  } catch (const Error& error) {
    stop(error.what());
  }
  if (!std::isfinite(result.loss)) stop("non-finite loss");
  if (train) transformer_->backward(result.dlogps);
  return result;
}

Metrics Trainer::evaluate() {
  MetricSums sums;
  // Per system prompt k: pairs whose implicit reward prefers the chosen answer, and pairs.
  std::vector<double> system_counts(2 * eval_systems_.size(), 0.0);
  const auto saved_cache = std::move(reference_cache_);  // the cache holds training pairs only
  reference_cache_.clear();
  for (const std::vector<int64_t>& indices : evaluation_batches(eval_pairs_.size())) {
    Batch batch = make_batch(eval_pairs_, indices, options_.packing, session_.tokenizer->pad_id());
    const ObjectiveResult result = run_micro_batch(batch, 0, 0, false);
    sums.add(result.metrics);
    for (size_t i = 0; i < indices.size() && !eval_systems_.empty(); ++i) {
      const std::string& system = eval_pairs_[size_t(indices[i])].system;
      const size_t k = size_t(std::find(eval_systems_.begin(), eval_systems_.end(), system) - eval_systems_.begin());
      system_counts[2 * k] += result.reward_margins[i] > 0 ? 1.0 : 0.0;
      system_counts[2 * k + 1] += 1.0;
    }
  }
  reference_cache_ = std::move(saved_cache);
  Metrics metrics = summed(group_, sums).averages("eval_");
  group_.sum(system_counts);
  for (size_t k = 0; k < eval_systems_.size(); ++k)
    metrics[kPerSystemAccuracy + ("system_" + std::to_string(k))] = system_counts[2 * k] / system_counts[2 * k + 1];
  return metrics;
}

TrainingOutcome Trainer::run() {
  validate_train_options(options_);
  // "today" becomes the date itself, so args.json records the prompts' exact text.
  options_.chat_template_date = parse_chat_template_date(options_.chat_template_date);
  if (options_.threads > 0) omp_set_num_threads(options_.threads);
  if (group_.is_main()) prepare_output_dir(options_);
  if (group_.size() > 1 && options_.device == "cuda") CST_ON_CUDA(cuda::select_device(group_.rank()));
  session_ = open_model_session(options_.model_path, options_.device, options_.chat_template,
                                options_.chat_template_date, !options_.dry_run);
  objective_ = objective_config_from_names(options_.loss_type, options_.beta, options_.label_smoothing,
                                           options_.rpo_alpha, options_.reference_free);
  attention_backward_ = attention_backward_by_name(options_.attention_backward, "--attention_backward");
  load_data();
  if (!options_.dump_tokenized.empty() && group_.is_main()) {
    dump_tokenized(options_.dump_tokenized, train_pairs_);
    std::fprintf(stderr, "wrote %zu tokenized pairs to %s\n", train_pairs_.size(), options_.dump_tokenized.c_str());
  }
  if (options_.dry_run) return {};
  if (group_.is_main()) {
    write_text_atomically(fs::path(options_.output_dir) / "args.json", train_options_to_json(options_).dump(2) + "\n");
    if (!eval_systems_.empty()) {  // what the metrics eval_rewards/accuracies/system_<k> refer to
      nlohmann::json legend;
      for (size_t k = 0; k < eval_systems_.size(); ++k) legend["system_" + std::to_string(k)] = eval_systems_[k];
      write_text_atomically(fs::path(options_.output_dir) / "eval_system_prompts.json", legend.dump(2) + "\n");
    }
  }

  const ModelConfig& config = session_.config();
  lora_ = std::make_unique<LoraAdapter>(config, lora_config_from(options_), session_.device, backend_dtype(session_.device));
  lora_->initialize(uint64_t(options_.seed));
  transformer_ = std::make_unique<Transformer>(config, *session_.weights, lora_.get());
  AdamWConfig adam;
  adam.beta1 = float(options_.adam_beta1);
  adam.beta2 = float(options_.adam_beta2);
  adam.epsilon = float(options_.adam_epsilon);
  adam.weight_decay = float(options_.weight_decay);
  AdamW optimizer(lora_->parameters(), adam);

  BatchOptions batching;
  batching.pairs_per_batch = options_.per_device_train_batch_size;
  batching.packing = options_.packing;
  batching.length_bucketing = options_.length_bucketing;
  batching.seed = uint64_t(options_.seed);
  batching.pad_id = session_.tokenizer->pad_id();
  PairLoader loader(train_pairs_, batching);
  const int accumulation = options_.gradient_accumulation_steps;
  const Share share = share_of(group_, accumulation);
  const long updates_per_epoch = std::max<long>(1, long(loader.batches_per_epoch()) / (accumulation * group_.size()));
  const long total_steps = options_.max_steps > 0
                               ? long(options_.max_steps)
                               : std::max<long>(1, long(std::ceil(options_.num_train_epochs * double(updates_per_epoch))));
  LearningRateSchedule schedule{options_.lr_scheduler_type, options_.learning_rate, total_steps,
                                warmup_steps_for(total_steps, options_.warmup_steps, options_.warmup_ratio)};

  TrainerState state;
  state.seed = options_.seed;
  if (!options_.resume_from_checkpoint.empty()) {
    const std::string checkpoint = resolve_checkpoint(options_.resume_from_checkpoint, options_.output_dir);
    state = load_checkpoint(checkpoint, options_.seed, *lora_, optimizer);
    reward_mean_ = state.reward_mean;
    loader.restore(state.data_position);
    if (group_.is_main()) std::fprintf(stderr, "resumed from %s at step %ld\n", checkpoint.c_str(), state.step);
  }
  if (options_.precompute_ref_log_probs && objective_.objective == Objective::preference && !objective_.reference_free)
    precompute_reference();

  if (group_.is_main() && session_.device == Device::cpu)
    if (const std::string hint = blas_kernel_hint(); !hint.empty()) std::fprintf(stderr, "%s\n", hint.c_str());
  if (group_.is_main())
    std::fprintf(stderr, "training: %lld LoRA parameters (r=%d) on %s, %ld steps of %d x %d x %d pairs (batch x accumulation x workers)\n",
                 (long long)lora_->num_parameters(), options_.lora_r, device_name(session_.device), total_steps,
                 options_.per_device_train_batch_size, accumulation, group_.size());
  // Rank 0 alone shows progress and writes the run directory.
  std::optional<RunLog> log;
  if (group_.is_main()) log.emplace(options_.output_dir, total_steps, state.step > 0);
  std::vector<Tensor> gradients;
  for (const LoraAdapter::Parameter& parameter : lora_->parameters()) gradients.push_back(parameter.grad);
  TrainingOutcome outcome;
  MetricSums since_log;
  // Throughput counts the training steps only (not evaluation or checkpoints): per step for the
  // progress bar, over the logging window for metrics.jsonl.
  double window_seconds = 0;
  double window_tokens = 0;
  std::string last_checkpoint;
  const auto [profile_first, profile_last] = parse_profile_steps(options_.profile_steps);
  const bool profiling = profile_last >= profile_first;
  if (profiling && session_.device != Device::cuda) fail("--profile_steps needs the CUDA backend");
  while (state.step < total_steps) {
    if (profiling && state.step + 1 == profile_first) CST_ON_CUDA(cuda::profiler_start());
    NvtxRange step_range("step " + std::to_string(state.step + 1));
    const auto step_start = std::chrono::steady_clock::now();
    const int64_t tokens_before = tokens_processed_;
    lora_->zero_grad();
    MetricSums own_sums;
    loader.skip(share.before);
    for (int micro = 0; micro < share.own; ++micro) {
      Batch batch = loader.next();
      own_sums.add(run_micro_batch(batch, state.step, share.before + micro, true).metrics);
    }
    loader.skip(share.after);
    group_.sum_gradients(gradients);
    const MetricSums step_sums = summed(group_, own_sums);
    const double grad_norm = optimizer.gradient_norm();
    if (!std::isfinite(grad_norm))
      fail("non-finite gradient norm at step ", state.step + 1, "; training stopped",
           last_checkpoint.empty() ? std::string(", no checkpoint was written yet")
                                   : ", the last good checkpoint is " + last_checkpoint);
    const double learning_rate = schedule.at(state.step);
    optimizer.step(float(learning_rate), clip_scale(grad_norm, options_.max_grad_norm));
    lora_->sync_compute_copies();
    ++state.step;
    if (profiling && state.step == profile_last) CST_ON_CUDA(cuda::profiler_stop());
    state.data_position = loader.position();
    since_log.add(step_sums);

    const double step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    double step_tokens = double(tokens_processed_ - tokens_before);
    group_.sum({&step_tokens, 1});
    window_seconds += step_seconds;
    window_tokens += step_tokens;
    Metrics averages = step_sums.averages("");
    if (log) log->progress(state.step, averages["loss"], averages.count("rewards/accuracies") ? averages["rewards/accuracies"] : 0.0,
                 step_tokens / std::max(step_seconds, 1e-9));
    if (state.step % options_.logging_steps == 0 || state.step == total_steps) {
      Metrics metrics = since_log.averages("");
      metrics["learning_rate"] = schedule.at(state.step);  // as HF logs it: after the scheduler step
      metrics["grad_norm"] = grad_norm;
      metrics["tokens/s"] = window_tokens / std::max(window_seconds, 1e-9);
      metrics["epoch"] = double(state.step) / double(updates_per_epoch);
      metrics["memory_gib"] = memory_gib(session_.device);
      if (log) log->record(state.step, metrics);
      outcome.last_train = metrics;
      since_log = {};
      window_seconds = 0;
      window_tokens = 0;
    }
    if (!eval_pairs_.empty() && ((options_.eval_steps > 0 && state.step % options_.eval_steps == 0) || state.step == total_steps)) {
      outcome.last_eval = evaluate();
      if (log) log->record(state.step, outcome.last_eval);
    }
    const bool save = (options_.save_steps > 0 && state.step % options_.save_steps == 0) || state.step == total_steps;
    state.reward_mean = reward_mean_;  // after evaluation, which moves it too
    if (save && group_.is_main()) {
      last_checkpoint = save_checkpoint(options_.output_dir, state, *lora_, optimizer, options_.model_path);
      remove_old_checkpoints(options_.output_dir, options_.save_total_limit);
    }
  }
  outcome.steps = state.step;
  outcome.adapter_dir = options_.output_dir;
  outcome.gradient_path = group_.gradient_path();
  if (!group_.is_main()) return outcome;
  lora_->save_peft(options_.output_dir, options_.model_path);
  log->write_plot();
  std::fprintf(stderr, "done: adapter in %s (adapter_config.json, adapter_model.safetensors), metrics in %s/metrics.jsonl\n",
               options_.output_dir.c_str(), options_.output_dir.c_str());
  return outcome;
}

nlohmann::json outcome_to_json(const TrainingOutcome& outcome) {
  return {{"steps", outcome.steps}, {"last_train", outcome.last_train}, {"last_eval", outcome.last_eval},
          {"adapter_dir", outcome.adapter_dir}, {"gradient_path", outcome.gradient_path}};
}

TrainingOutcome outcome_from_json(const nlohmann::json& json) {
  TrainingOutcome outcome;
  outcome.steps = json.at("steps").get<long>();
  outcome.last_train = json.at("last_train").get<Metrics>();
  outcome.last_eval = json.at("last_eval").get<Metrics>();
  outcome.adapter_dir = json.at("adapter_dir").get<std::string>();
  outcome.gradient_path = json.at("gradient_path").get<std::string>();
  return outcome;
}

// The launcher of --num_processes N: checks what can be checked once, then starts the workers
// with every option settled (the device resolved, the CPU threads shared out).
TrainingOutcome run_with_workers(const TrainOptions& options) {
  validate_train_options(options);
  const int count = options.num_processes;
  TrainOptions worker_options = options;
  const Device device = resolve_device(options.device);
  worker_options.device = device_name(device);
  worker_options.chat_template_date = parse_chat_template_date(options.chat_template_date);  // one day for all
  if (device == Device::cuda) {
    int visible = 0;
    CST_ON_CUDA(visible = cuda::device_count());
    if (count > visible) fail("--num_processes ", count, " needs ", count, " GPUs, but ", visible, " are visible");
  } else if (options.threads == 0) {
    worker_options.threads = std::max(1, int(std::thread::hardware_concurrency()) / count);
  }
  prepare_output_dir(options);
  const std::string result = run_workers(count, train_options_to_json(worker_options).dump());
  return outcome_from_json(nlohmann::json::parse(result));
}

}  // namespace

TrainingOutcome run_training(const TrainOptions& options) {
  if (options.num_processes > 1 && !options.dry_run) return run_with_workers(options);
  WorkerGroup alone;
  return Trainer(options, alone).run();
}

int run_training_worker(const char* program_name) {
  return run_worker_process(
      [](WorkerGroup& group, const std::string& task) {
        TrainOptions options;
        apply_train_options_json(nlohmann::json::parse(task), options, "the worker's options");
        return outcome_to_json(Trainer(options, group).run()).dump();
      },
      program_name);
}

}  // namespace cst
