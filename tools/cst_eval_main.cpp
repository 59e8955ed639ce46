// cst_eval model.bin [--adapter DIR] data [--system_prompts A B] [--json FILE] [--per_example FILE]
// For each system prompt: how often the base and the trained model prefer the answer that prompt
// asks for (train/evaluation.h). Data flags are cst_train's (columns, chat template, lengths).
#include "kernels/program.h"
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "data/pair_tokenizer.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "train/evaluation.h"
#include "train/model_session.h"
#include "train/options.h"

namespace {

struct EvalFlags {
  std::string adapter_dir, json_path, per_example_path;
};

// Takes cst_eval's own flags out of argv; the rest are cst_train's.
std::vector<char*> extract_eval_flags(int argc, char** argv, EvalFlags& flags) {
  std::vector<char*> rest;
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    std::string* target = word == "--adapter" ? &flags.adapter_dir
                        : word == "--json" ? &flags.json_path
                        : word == "--per_example" ? &flags.per_example_path : nullptr;
    if (target) {
      if (i + 1 >= argc) cst::fail(word, " needs a value");
      *target = argv[++i];
    } else {
      rest.push_back(argv[i]);
    }
  }
  return rest;
}

int run(int argc, char** argv) {
  EvalFlags flags;
  std::vector<char*> rest = extract_eval_flags(argc, argv, flags);
  cst::TrainOptions options;
  for (char* word : rest)
    if (!std::strcmp(word, "--help") || !std::strcmp(word, "-h")) {
      std::puts("usage: cst_eval model.bin [--adapter DIR] data [--system_prompts A B] [--json FILE]\n"
                "                [--per_example FILE] [cst_train data flags: --beta, --max_length, ...]");
      return 0;
    }
  cst::parse_train_options(int(rest.size()), rest.data(), options);
  cst::validate_train_options(options);
  cst::ModelSession session = cst::open_model_session(options.model_path, options.device, options.chat_template, true);
  cst::PreferenceData data = cst::load_preference_data(options.data_path, *session.tokenizer, session.chat_template,
                                                       cst::preference_options_from(options),
                                                       cst::tokenize_options_from(options));
  if (data.pairs.empty()) cst::fail(options.data_path, ": no pairs to evaluate");
  std::unique_ptr<cst::LoraAdapter> adapter;
  if (!flags.adapter_dir.empty()) {
    adapter = std::make_unique<cst::LoraAdapter>(session.config(), cst::LoraAdapter::read_peft_config(flags.adapter_dir),
                                                 session.device, cst::backend_dtype(session.device));
    adapter->load_peft_weights(flags.adapter_dir);
  }
  cst::Transformer transformer(session.config(), *session.weights, adapter.get());
  cst::EvaluationReport report = cst::evaluate_preferences(transformer, data.pairs, options.beta,
                                                           options.per_device_eval_batch_size,
                                                           session.tokenizer->pad_id(), flags.per_example_path);
  std::fputs(report.table().c_str(), stdout);
  if (!flags.json_path.empty()) {
    const std::string text = report.to_json().dump(2) + "\n";
    cst::write_file_atomically(flags.json_path, {{text.data(), text.size()}});
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cst::run_program("cst_eval", [&] { return run(argc, argv); });
}
