#include "train/options.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <fstream>
#include <sstream>
#include <variant>

#include "kernels/attention.h"
#include "kernels/error.h"
#include "kernels/preference_loss.h"

namespace cst {
namespace {

using Member = std::variant<std::string TrainOptions::*, int TrainOptions::*, double TrainOptions::*,
                            bool TrainOptions::*, std::vector<std::string> TrainOptions::*>;

struct OptionSpec {
  const char* name;
  Member member;
  const char* help;
};

// The one table of options: parsing, --config, --help and args.json all read it.
const std::vector<OptionSpec>& option_table() {
  using T = TrainOptions;
  static const std::vector<OptionSpec> table = {
      {"output_dir", &T::output_dir, "run directory: args.json, metrics.jsonl, checkpoints, adapter"},
      {"device", &T::device, "auto, cpu or cuda"},
      {"num_processes", &T::num_processes, "data-parallel worker processes: GPUs 0..N-1 on CUDA (or N CPU workers)"},
      {"seed", &T::seed, "seed for LoRA init, shuffling and dropout"},
      {"dry_run", &T::dry_run, "load, build pairs, tokenize, report statistics, then stop"},
      {"dump_tokenized", &T::dump_tokenized, "write every tokenized example as jsonl to this file"},
      {"resume_from_checkpoint", &T::resume_from_checkpoint, "checkpoint directory to continue from, or latest (output_dir's last)"},
      {"logging_steps", &T::logging_steps, "log metrics every N optimizer steps"},
      {"save_steps", &T::save_steps, "checkpoint every N steps (0: only at the end)"},
      {"save_total_limit", &T::save_total_limit, "keep only the newest N checkpoints (0: keep all)"},
      {"eval_steps", &T::eval_steps, "evaluate every N steps (0: only at the end)"},
      {"threads", &T::threads, "CPU threads (0: all cores)"},
      {"profile_steps", &T::profile_steps, "A:B brackets steps A..B with cudaProfilerStart/Stop"},
      {"system_prompts", &T::system_prompts, "two system prompts A B: CST pairs from prompt/chosen/rejected rows"},
      {"dpo_baseline", &T::dpo_baseline, "with --system_prompts, keep only the first direction (plain DPO)"},
      {"system_column", &T::system_column, "name of the system prompt column"},
      {"prompt_column", &T::prompt_column, "name of the prompt column"},
      {"chosen_column", &T::chosen_column, "name of the chosen answer column"},
      {"rejected_column", &T::rejected_column, "name of the rejected answer column"},
      {"skip_bad_rows", &T::skip_bad_rows, "skip rows with null or missing cells instead of failing"},
      {"chat_template", &T::chat_template, "chatml, solar, llama2, llama3, llama3.1, mistral, mistral_v2, mistral_v3, zephyr or plain (default: recognise)"},
      {"chat_template_date", &T::chat_template_date, "llama3.1's \"Today Date\" header: DD Mon YYYY, or today"},
      {"max_length", &T::max_length, "maximum tokens of prompt + answer"},
      {"max_prompt_length", &T::max_prompt_length, "maximum prompt tokens when truncating"},
      {"truncation_mode", &T::truncation_mode, "keep_end or keep_start (which end of the prompt to keep)"},
      {"packing", &T::packing, "pack sequences without padding (varlen attention)"},
      {"length_bucketing", &T::length_bucketing, "batch pairs of similar length together"},
      {"eval_split", &T::eval_split, "fraction of pairs held out for evaluation"},
      {"eval_file", &T::eval_file, "a separate evaluation data file"},
      {"loss_type", &T::loss_type,
       "sigmoid, robust, hinge, ipo, exo_pair, sppo_hard, nca_pair, bco_pair, aot, aot_pair (trl's DPO losses), "
       "or sft (next-token training)"},
      {"beta", &T::beta, "DPO temperature"},
      {"label_smoothing", &T::label_smoothing, "label smoothing (sigmoid: conservative DPO; robust, exo_pair, aot, aot_pair)"},
      {"rpo_alpha", &T::rpo_alpha, "weight of the NLL on chosen answers added to the loss (0: off)"},
      {"reference_free", &T::reference_free, "use no reference model (reference log-probs 0)"},
      {"precompute_ref_log_probs", &T::precompute_ref_log_probs, "compute reference log-probs once and cache them"},
      {"learning_rate", &T::learning_rate, "peak learning rate"},
      {"lr_scheduler_type", &T::lr_scheduler_type, "linear, cosine or constant"},
      {"warmup_ratio", &T::warmup_ratio, "warmup as a fraction of the steps"},
      {"warmup_steps", &T::warmup_steps, "warmup steps (overrides warmup_ratio)"},
      {"per_device_train_batch_size", &T::per_device_train_batch_size, "pairs per micro-batch"},
      {"per_device_eval_batch_size", &T::per_device_eval_batch_size, "pairs per evaluation batch"},
      {"gradient_accumulation_steps", &T::gradient_accumulation_steps, "micro-batches per optimizer step"},
      {"num_train_epochs", &T::num_train_epochs, "epochs (may be fractional)"},
      {"max_steps", &T::max_steps, "optimizer steps (overrides num_train_epochs when > 0)"},
      {"max_grad_norm", &T::max_grad_norm, "global gradient-norm clipping (0: off)"},
      {"weight_decay", &T::weight_decay, "AdamW weight decay"},
      {"adam_beta1", &T::adam_beta1, "AdamW beta1"},
      {"adam_beta2", &T::adam_beta2, "AdamW beta2"},
      {"adam_epsilon", &T::adam_epsilon, "AdamW epsilon"},
      {"lora_r", &T::lora_r, "LoRA rank"},
      {"lora_alpha", &T::lora_alpha, "LoRA alpha (scaling = alpha / r)"},
      {"lora_dropout", &T::lora_dropout, "LoRA dropout probability"},
      {"disable_dropout", &T::disable_dropout, "turn dropout off during training (trl's default)"},
      {"use_rslora", &T::use_rslora, "rank-stabilised scaling alpha / sqrt(r)"},
      {"lora_target_modules", &T::lora_target_modules, "projections that get adapters, or all-linear"},
      {"gradient_checkpointing", &T::gradient_checkpointing, "keep only layer inputs; recompute the rest in backward"},
      {"attention_backward", &T::attention_backward,
       "how the CUDA attention backward (head dims 64 and 128) forms dq: recompute_dq (a pass of its own), "
       "ordered_dq (added by the dK/dV blocks in a fixed order: less work), both the same bits every run; "
       "or atomic_dq (added with atomics as FlashAttention-2 does: its last bits vary)"},
      {"demo", &T::demo, "run the embedded demo (tiny model, synthetic CST data, DPO vs CST)"},
  };
  return table;
}

const OptionSpec* find_option(const std::string& name) {
  for (const OptionSpec& spec : option_table())
    if (name == spec.name) return &spec;
  return nullptr;
}

template <class Number>
Number parse_number(const std::string& flag, const std::string& text) {
  Number value{};
  const char* end = text.data() + text.size();
  auto [pointer, error] = std::from_chars(text.data(), end, value);
  bool valid = error == std::errc() && pointer == end;
  if constexpr (std::is_floating_point_v<Number>) valid = valid && std::isfinite(value);  // no inf, nan
  if (!valid)
    fail("--", flag, ": '", text, "' is not a valid ", std::is_integral_v<Number> ? "integer" : "finite number");
  return value;
}

bool parse_bool(const std::string& flag, const std::string& text) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  fail("--", flag, ": '", text, "' is not true or false");
}

bool is_flag(const std::string& text) { return text.size() > 2 && text.rfind("--", 0) == 0; }

// Sets one option from command-line words (values may be empty for a bare boolean flag).
void set_from_words(TrainOptions& options, const OptionSpec& spec, const std::vector<std::string>& values) {
  const std::string flag = spec.name;
  auto single = [&]() -> const std::string& {
    if (values.size() != 1) fail("--", flag, " takes one value, got ", values.size());
    return values[0];
  };
  std::visit(
      [&](auto member) {
        using Value = std::remove_reference_t<decltype(options.*member)>;
        if constexpr (std::is_same_v<Value, std::string>) options.*member = single();
        else if constexpr (std::is_same_v<Value, int>) options.*member = parse_number<int>(flag, single());
        else if constexpr (std::is_same_v<Value, double>) options.*member = parse_number<double>(flag, single());
        else if constexpr (std::is_same_v<Value, bool>) options.*member = values.empty() ? true : parse_bool(flag, single());
        else options.*member = values;
      },
      spec.member);
}

void set_from_json(TrainOptions& options, const OptionSpec& spec, const nlohmann::json& value,
                   const std::string& where) {
  const std::string key = spec.name;
  auto wrong = [&](const char* expected) { fail(where, ": key '", key, "' must be ", expected); };
  std::visit(
      [&](auto member) {
        using Value = std::remove_reference_t<decltype(options.*member)>;
        if constexpr (std::is_same_v<Value, std::string>) {
          if (!value.is_string()) wrong("a string");
          options.*member = value.get<std::string>();
        } else if constexpr (std::is_same_v<Value, int>) {
          if (!value.is_number_integer() || value.get<int64_t>() < std::numeric_limits<int>::min() ||
              value.get<int64_t>() > std::numeric_limits<int>::max())
            wrong("an integer in the int range");
          options.*member = value.get<int>();
        } else if constexpr (std::is_same_v<Value, double>) {
          if (!value.is_number() || !std::isfinite(value.get<double>())) wrong("a finite number");
          options.*member = value.get<double>();
        } else if constexpr (std::is_same_v<Value, bool>) {
          if (!value.is_boolean()) wrong("true or false");
          options.*member = value.get<bool>();
        } else {
          if (!value.is_array()) wrong("a list of strings");
          std::vector<std::string> items;
          for (const auto& item : value) {
            if (!item.is_string()) wrong("a list of strings");
            items.push_back(item.get<std::string>());
          }
          options.*member = items;
        }
      },
      spec.member);
}

}  // namespace

void apply_train_options_json(const nlohmann::json& json, TrainOptions& options, const std::string& where) {
  if (!json.is_object()) fail(where, ": expected a JSON object of options");
  for (const auto& [key, value] : json.items()) {
    if (key == "model_path" || key == "data_path") {
      if (!value.is_string()) fail(where, ": key '", key, "' must be a string");
      (key == "model_path" ? options.model_path : options.data_path) = value.get<std::string>();
      continue;
    }
    const OptionSpec* spec = find_option(key);
    if (!spec) fail(where, ": unknown option '", key, "' (see cst_train --help)");
    set_from_json(options, *spec, value, where);
  }
}

bool parse_train_options(int argc, char** argv, TrainOptions& options) {
  std::vector<std::string> words(argv, argv + argc);
  std::vector<std::string> positional;
  // A --config file applies first, so flags on the command line override it.
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i] == "--help" || words[i] == "-h") {
      std::fputs(train_options_help().c_str(), stdout);
      return false;
    }
    if (words[i] == "--config") {
      if (i + 1 >= words.size()) fail("--config needs a file");
      std::ifstream in(words[i + 1]);
      if (!in) fail("--config: cannot open ", words[i + 1]);
      nlohmann::json json;
      try {
        json = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        fail("--config ", words[i + 1], ": invalid JSON: ", e.what());
      }
      apply_train_options_json(json, options, words[i + 1]);
    }
  }
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word == "--config") {
      ++i;
      continue;
    }
    if (!is_flag(word)) {
      positional.push_back(word);
      continue;
    }
    std::string name = word.substr(2);
    std::vector<std::string> values;
    if (size_t equals = name.find('='); equals != std::string::npos) {
      values.push_back(name.substr(equals + 1));
      name = name.substr(0, equals);
    } else {
      while (i + 1 < words.size() && !is_flag(words[i + 1])) values.push_back(words[++i]);
    }
    const OptionSpec* spec = find_option(name);
    if (!spec) fail("unknown flag --", name, " (see cst_train --help)");
    // Only list options take several values; extra words after a scalar flag are positional.
    const bool is_list = std::holds_alternative<std::vector<std::string> TrainOptions::*>(spec->member);
    const bool is_bool = std::holds_alternative<bool TrainOptions::*>(spec->member);
    if (!is_list && values.size() > 1) {
      positional.insert(positional.end(), values.begin() + 1, values.end());
      values.resize(1);
    }
    if (is_bool && values.size() == 1 && values[0] != "true" && values[0] != "false" &&
        values[0] != "1" && values[0] != "0" && values[0] != "yes" && values[0] != "no") {
      positional.push_back(values[0]);  // a bare boolean flag followed by a positional argument
      values.clear();
    }
    set_from_words(options, *spec, values);
  }
  if (positional.size() > 2) fail("unexpected argument '", positional[2], "' (usage: cst_train model.bin data [flags])");
  if (positional.size() >= 1) options.model_path = positional[0];
  if (positional.size() >= 2) options.data_path = positional[1];
  return true;
}

std::string train_options_help() {
  std::ostringstream text;
  text << "usage: cst_train model.bin data.{parquet,json,jsonl,dir} [--flag value ...]\n"
          "       cst_train --demo\n"
          "LoRA + DPO/CST fine-tuning. Defaults reproduce the seed recipe (trl 0.9.6 DPO, LoRA r=24).\n"
          "  --config run.json   options as a JSON object with the same keys\n";
  nlohmann::json defaults = train_options_to_json(TrainOptions{});
  for (const OptionSpec& spec : option_table()) {
    std::string line = std::string("  --") + spec.name;
    line.resize(std::max<size_t>(line.size() + 1, 32), ' ');
    text << line << spec.help << " [default: " << defaults[spec.name].dump() << "]\n";
  }
  return text.str();
}

nlohmann::json train_options_to_json(const TrainOptions& options) {
  nlohmann::json json = {{"model_path", options.model_path}, {"data_path", options.data_path}};
  for (const OptionSpec& spec : option_table())
    std::visit([&](auto member) { json[spec.name] = options.*member; }, spec.member);
  return json;
}

PreferenceOptions preference_options_from(const TrainOptions& o) {
  PreferenceOptions options;
  options.columns = {o.system_column, o.prompt_column, o.chosen_column, o.rejected_column};
  if (!o.system_prompts.empty()) {
    options.system_prompts = std::pair{o.system_prompts[0], o.system_prompts[1]};
    options.columns.system = "";  // the system prompt comes from the flag
  }
  options.dpo_baseline = o.dpo_baseline;
  options.skip_bad_rows = o.skip_bad_rows;
  return options;
}

TokenizeOptions tokenize_options_from(const TrainOptions& o) {
  TokenizeOptions options;
  options.max_length = o.max_length;
  options.max_prompt_length = o.max_prompt_length;
  options.truncation_mode = truncation_mode_by_name(o.truncation_mode);
  options.skip_bad_pairs = o.skip_bad_rows;
  return options;
}

void validate_train_options(const TrainOptions& o) {
  auto require = [](bool ok, auto... message) {
    if (!ok) fail(message...);
  };
  require(o.device == "auto" || o.device == "cpu" || o.device == "cuda", "--device must be auto, cpu or cuda, got '", o.device, "'");
  parse_chat_template_date(o.chat_template_date);
  if (o.loss_type != "sft") {
    try {
      parse_loss_type(o.loss_type);
    } catch (const Error& error) {
      fail("--loss_type: ", error.what(), ", or sft");
    }
  }
  // bco_pair's running reward mean would have to be shared by the workers after every micro-batch.
  require(o.loss_type != "bco_pair" || o.num_processes == 1,
          "--loss_type bco_pair keeps a running mean of the rewards across micro-batches and runs in one "
          "process only (got --num_processes ", o.num_processes, ")");
  require(o.lr_scheduler_type == "linear" || o.lr_scheduler_type == "cosine" || o.lr_scheduler_type == "constant",
          "--lr_scheduler_type must be linear, cosine or constant, got '", o.lr_scheduler_type, "'");
  require(o.truncation_mode == "keep_end" || o.truncation_mode == "keep_start",
          "--truncation_mode must be keep_end or keep_start, got '", o.truncation_mode, "'");
  attention_backward_by_name(o.attention_backward, "--attention_backward");
  require(o.num_processes >= 1 && o.num_processes <= 64, "--num_processes must be in [1, 64], got ", o.num_processes);
  require(o.beta > 0, "--beta must be positive, got ", o.beta);
  require(o.label_smoothing >= 0 && o.label_smoothing < 0.5, "--label_smoothing must be in [0, 0.5), got ", o.label_smoothing);
  require(o.rpo_alpha >= 0, "--rpo_alpha must be >= 0");
  require(o.learning_rate >= 0, "--learning_rate must be >= 0, got ", o.learning_rate);
  require(o.warmup_ratio >= 0 && o.warmup_ratio <= 1, "--warmup_ratio must be in [0, 1]");
  require(o.warmup_steps >= 0, "--warmup_steps must be >= 0");
  require(o.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1");
  require(o.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be >= 1");
  require(o.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1");
  require(o.num_train_epochs > 0 || o.max_steps > 0, "--num_train_epochs must be > 0 (or set --max_steps)");
  require(o.num_train_epochs <= 1e6, "--num_train_epochs must be at most 1e6, got ", o.num_train_epochs);
  require(o.weight_decay >= 0, "--weight_decay must be >= 0, got ", o.weight_decay);
  require(o.adam_epsilon > 0, "--adam_epsilon must be > 0, got ", o.adam_epsilon);
  require(o.lora_alpha > 0, "--lora_alpha must be > 0, got ", o.lora_alpha);
  require(o.max_grad_norm >= 0, "--max_grad_norm must be >= 0");
  require(o.max_length >= 2, "--max_length must be >= 2");
  require(o.max_prompt_length >= 1 && o.max_prompt_length < o.max_length,
          "--max_prompt_length must be in [1, max_length), got ", o.max_prompt_length);
  require(o.lora_r >= 1, "--lora_r must be >= 1");
  require(o.lora_dropout >= 0 && o.lora_dropout < 1, "--lora_dropout must be in [0, 1)");
  require(o.eval_split >= 0 && o.eval_split < 1, "--eval_split must be in [0, 1)");
  require(o.system_prompts.empty() || o.system_prompts.size() == 2,
          "--system_prompts takes exactly two prompts (harmless, then uncensored), got ", o.system_prompts.size());
  require(!o.dpo_baseline || !o.system_prompts.empty(), "--dpo_baseline needs --system_prompts A B");
  require(o.logging_steps >= 1, "--logging_steps must be >= 1");
  require(o.save_steps >= 0 && o.eval_steps >= 0, "--save_steps and --eval_steps must be >= 0");
  require(o.save_total_limit >= 0, "--save_total_limit must be >= 0");
  require(o.adam_beta1 >= 0 && o.adam_beta1 < 1 && o.adam_beta2 >= 0 && o.adam_beta2 < 1,
          "--adam_beta1/--adam_beta2 must be in [0, 1)");
  if (!o.demo) {
    require(!o.model_path.empty(), "missing model path (usage: cst_train model.bin data.parquet [flags]; --help)");
    require(!o.data_path.empty(), "missing data path (usage: cst_train model.bin data.parquet [flags]; --help)");
  }
}

}  // namespace cst
