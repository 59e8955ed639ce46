// cst_train's options. Names follow trl's DPOConfig / HF TrainingArguments where one exists, and the
// defaults reproduce the seed recipe (REFERENCE.md section 2): LoRA r=24 alpha=48 on all seven
// projections, beta 0.1, sigmoid loss, lr 5e-5 linear without warmup, batch 2 x accumulation 4,
// one epoch, max_length 512, max_prompt_length 128, keep_end, seed 42, max_grad_norm 1.0.
//
// Every option is declared once in a table (options.cpp) that drives command-line parsing,
// `--config run.json` (the same keys), `--help` and args.json.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "data/pair_tokenizer.h"
#include "data/preference.h"
#include "kernels/attention.h"

namespace cst {

struct TrainOptions {
  // Positional.
  std::string model_path;
  std::string data_path;

  // Run.
  std::string output_dir = "cst_output";
  std::string device = "auto";  // auto, cpu, cuda
  int num_processes = 1;        // data-parallel workers: one per GPU (train/distributed.h)
  int seed = 42;
  bool dry_run = false;
  std::string dump_tokenized;   // jsonl of every tokenized example, then continue (or stop with dry_run)
  std::string resume_from_checkpoint;
  int logging_steps = 1;
  int save_steps = 0;           // 0: only at the end
  int save_total_limit = 0;     // checkpoints kept in output_dir, the newest (0: all)
  int eval_steps = 0;           // 0: only at the end (when there is an eval set)
  int threads = 0;              // CPU threads, 0: all cores
  std::string profile_steps;    // "A:B": bracket steps A..B with the CUDA profiler

  // Data.
  std::vector<std::string> system_prompts;  // two prompts: CST pairs from prompt/chosen/rejected rows
  bool dpo_baseline = false;                // with system_prompts: keep the first direction only
  std::string system_column = "system";
  std::string prompt_column = "prompt";
  std::string chosen_column = "chosen";
  std::string rejected_column = "rejected";
  bool skip_bad_rows = false;
  std::string chat_template;                // empty: recognise the tokenizer's template
  std::string chat_template_date = kLlama31DefaultDate;  // llama3.1's "Today Date" header, or "today"
  int max_length = 512;
  int max_prompt_length = 128;
  std::string truncation_mode = "keep_end";
  bool packing = true;
  bool length_bucketing = true;
  double eval_split = 0.0;                  // fraction of pairs held out for evaluation
  std::string eval_file;                    // or a second data file

  // Loss.
  std::string loss_type = "sigmoid";        // a trl DPO loss type (kernels/preference_loss.h) or sft
  double beta = 0.1;
  double label_smoothing = 0.0;
  double rpo_alpha = 0.0;                   // 0: off
  bool reference_free = false;
  bool precompute_ref_log_probs = false;

  // Optimisation.
  double learning_rate = 5e-5;
  std::string lr_scheduler_type = "linear"; // linear, cosine, constant
  double warmup_ratio = 0.0;
  int warmup_steps = 0;
  int per_device_train_batch_size = 2;
  int per_device_eval_batch_size = 4;
  int gradient_accumulation_steps = 4;
  double num_train_epochs = 1.0;
  int max_steps = -1;
  double max_grad_norm = 1.0;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;

  // LoRA.
  int lora_r = 24;
  double lora_alpha = 48.0;
  double lora_dropout = 0.05;
  bool disable_dropout = true;              // trl's default: dropout off during DPO
  bool use_rslora = false;
  std::vector<std::string> lora_target_modules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
  bool gradient_checkpointing = false;      // recompute layer activations in backward
  std::string attention_backward = attention_backward_name(kDefaultAttentionBackward);  // kernels/attention.h

  // The embedded demo.
  bool demo = false;
};

// Parses argv (without the program name). Throws cst::Error on unknown flags and bad values.
// Returns false when --help was printed.
bool parse_train_options(int argc, char** argv, TrainOptions& options);
std::string train_options_help();
nlohmann::json train_options_to_json(const TrainOptions& options);
// Applies a JSON object with option keys (the --config file).
void apply_train_options_json(const nlohmann::json& json, TrainOptions& options, const std::string& where);
// Checks values (ranges, enums, combinations): one clear error for the first bad one.
void validate_train_options(const TrainOptions& options);

// The data-side settings the options imply.
PreferenceOptions preference_options_from(const TrainOptions& options);
TokenizeOptions tokenize_options_from(const TrainOptions& options);

}  // namespace cst
