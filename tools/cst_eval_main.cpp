// cst_eval model.bin [--adapter DIR] data [--system_prompts A B] [--json FILE] [--per_example FILE]
// cst_eval model.bin [--adapter DIR] [data] --generate_prompts FILE --system_prompts A B
//          [--max_new_tokens N] [--generation_batch_size N] [--refusal_markers FILE]
//          [--generations OUT.jsonl] [--json FILE]
// For each system prompt: how often the base and the trained model prefer the answer that prompt
// asks for; with --generate_prompts also the paper's S0/S1 from greedy answers graded by refusal
// phrases (train/evaluation.h). Data flags are cst_train's (columns, chat template, lengths).
#include "kernels/program.h"
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "data/generation_prompts.h"
#include "data/pair_tokenizer.h"
#include "data/table.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "train/evaluation.h"
#include "train/model_session.h"
#include "train/options.h"

namespace {

struct EvalFlags {
  std::string adapter_dir, json_path, per_example_path;
  std::string generate_prompts, refusal_markers, generations_path, max_new_tokens = "128";
  std::string generation_batch_size = "16";
};

// Takes cst_eval's own flags out of argv; the rest are cst_train's.
std::vector<char*> extract_eval_flags(int argc, char** argv, EvalFlags& flags) {
  std::vector<char*> rest;
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    std::string* target = word == "--adapter" ? &flags.adapter_dir
                        : word == "--json" ? &flags.json_path
                        : word == "--per_example" ? &flags.per_example_path
                        : word == "--generate_prompts" ? &flags.generate_prompts
                        : word == "--refusal_markers" ? &flags.refusal_markers
                        : word == "--generations" ? &flags.generations_path
                        : word == "--max_new_tokens" ? &flags.max_new_tokens
                        : word == "--generation_batch_size" ? &flags.generation_batch_size : nullptr;
    if (target) {
      if (i + 1 >= argc) cst::fail(word, " needs a value");
      *target = argv[++i];
    } else {
      rest.push_back(argv[i]);
    }
  }
  return rest;
}

int parse_positive(const char* flag, const std::string& text) {
  try {
    size_t used = 0;
    const int value = std::stoi(text, &used);
    if (used == text.size() && value >= 1) return value;
  } catch (const std::exception&) {
  }
  cst::fail(flag, ": '", text, "' is not a whole number >= 1");
}

// The requests of a prompts file as cst_generate reads them ('prompt' or 'messages'), without
// system prompts of their own: each is answered under A and under B.
std::vector<std::vector<cst::ChatTurn>> read_prompts(const std::string& path) {
  std::vector<std::vector<cst::ChatTurn>> conversations;
  for (cst::GenerationRequest& request : cst::read_generation_requests(path, "")) {
    if (!request.system.empty())
      cst::fail(path, " row ", conversations.size(), ": has a system prompt of its own; cst_eval answers every ",
                "prompt under each of --system_prompts A B");
    conversations.push_back(std::move(request.turns));
  }
  if (conversations.empty()) cst::fail(path, ": no prompts to answer (the file has no rows)");
  return conversations;
}

int run(int argc, char** argv) {
  EvalFlags flags;
  std::vector<char*> rest = extract_eval_flags(argc, argv, flags);
  cst::TrainOptions options;
  for (char* word : rest)
    if (!std::strcmp(word, "--help") || !std::strcmp(word, "-h")) {
      std::puts("usage: cst_eval model.bin [--adapter DIR] data [--system_prompts A B] [--json FILE]\n"
                "                [--per_example FILE] [cst_train data flags: --beta, --max_length, ...]\n"
                "       cst_eval model.bin [--adapter DIR] [data] --generate_prompts FILE --system_prompts A B\n"
                "                [--max_new_tokens N (128)] [--generation_batch_size N (16)]\n"
                "                [--refusal_markers FILE] [--generations OUT.jsonl]\n"
                "  --generate_prompts FILE  json/jsonl/parquet rows with a 'prompt' or 'messages' (as cst_generate);\n"
                "                           each is answered greedily under A (harmless) and B (uncensored):\n"
                "                           S1 = refused under A,\n"
                "                           S0 = not refused under B (refusal = contains a refusal phrase)\n"
                "  --refusal_markers FILE   the refusal phrases, one per line (default: train/evaluation.h)\n"
                "  --generation_batch_size N  requests generated together (speed; answers equal up to rounding)\n"
                "  --generations OUT.jsonl  every answer: prompt, system_prompt, response, refused; also OUT.md");
      return 0;
    }
  cst::parse_train_options(int(rest.size()), rest.data(), options);
  const bool generate = !flags.generate_prompts.empty();
  if (!generate && (!flags.refusal_markers.empty() || !flags.generations_path.empty()))
    cst::fail("--refusal_markers and --generations need --generate_prompts FILE");
  if (!generate && options.data_path.empty() && !options.model_path.empty())
    cst::fail("nothing to evaluate: give preference data (cst_eval model.bin data ...) or --generate_prompts FILE");
  if (generate && options.system_prompts.empty())
    cst::fail("--generate_prompts needs --system_prompts A B (harmless, then uncensored)");
  const int max_new_tokens = parse_positive("--max_new_tokens", flags.max_new_tokens);
  const int generation_batch_size = parse_positive("--generation_batch_size", flags.generation_batch_size);
  {
    // cst_train's checks want preference data; a generation-only evaluation has none.
    cst::TrainOptions checked = options;
    if (generate && checked.data_path.empty()) checked.data_path = flags.generate_prompts;
    cst::validate_train_options(checked);
  }
  // Input files are read before the model so that their mistakes surface at once.
  std::vector<std::vector<cst::ChatTurn>> prompts;
  if (generate) prompts = read_prompts(flags.generate_prompts);
  const cst::RefusalGrader grader(flags.refusal_markers.empty() ? cst::default_refusal_markers()
                                                                : cst::read_refusal_markers(flags.refusal_markers));
  cst::ModelSession session = cst::open_model_session(options.model_path, options.device, options.chat_template,
                                                      options.chat_template_date, true);
  const std::unique_ptr<cst::LoraAdapter> adapter = session.load_adapter(flags.adapter_dir);
  cst::Transformer transformer(session.config(), *session.weights, adapter.get());
  nlohmann::json json = nlohmann::json::object();
  if (!options.data_path.empty()) {
    cst::PreferenceData data = cst::load_preference_data(options.data_path, *session.tokenizer, session.chat_template,
                                                         cst::preference_options_from(options),
                                                         cst::tokenize_options_from(options));
    if (data.pairs.empty()) cst::fail(options.data_path, ": no pairs to evaluate");
    cst::EvaluationReport report = cst::evaluate_preferences(transformer, data.pairs, options.beta,
                                                             options.per_device_eval_batch_size,
                                                             session.tokenizer->pad_id(), flags.per_example_path);
    std::fputs(report.table().c_str(), stdout);
    json = report.to_json();
  }
  if (generate) {
    cst::ConfigurabilityScore score = cst::evaluate_generations(
        transformer, *session.tokenizer, session.chat_template, prompts, options.system_prompts[0],
        options.system_prompts[1], max_new_tokens, generation_batch_size, grader);
    std::printf("\nGenerations graded by refusal phrases (S0 = not refused under uncensored, S1 = refused under harmless):\n%s",
                score.table().c_str());
    json["generations"] = score.to_json();
    if (!flags.generations_path.empty()) cst::write_graded_answers(score.answers, flags.generations_path);
  }
  if (!flags.json_path.empty()) {
    const std::string text = json.dump(2) + "\n";
    cst::write_file_atomically(flags.json_path, {{text.data(), text.size()}});
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cst::run_program("cst_eval", [&] { return run(argc, argv); });
}
