// cst_generate model.bin [--adapter DIR] --system "..." --prompt "..."
// cst_generate model.bin [--adapter DIR] --prompts FILE --output OUT.jsonl   (also writes OUT.md)
// Answers prompts (or conversations, ending with a user turn) under a chosen system prompt with the
// chat template used in training, streaming the text to the terminal and reporting tokens/s. The
// requests of a prompts file are generated --batch_size at a time (model/generation.h: the same
// answers as one at a time, up to the rounding of batched matrix products).
#include "kernels/program.h"
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "data/generation_prompts.h"
#include "model/generation.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "train/evaluation.h"
#include "train/model_session.h"
#include "train/respond.h"

namespace {

const char* kUsage =
    "usage: cst_generate model.bin [--adapter DIR] --system TEXT --prompt TEXT [options]\n"
    "       cst_generate model.bin [--adapter DIR] --prompts FILE --output OUT.jsonl [options]\n"
    "  --prompts FILE         json/jsonl/parquet rows with a 'prompt' or 'messages' (a conversation\n"
    "                         [system,] user, assistant, ..., user) and optionally 'system'\n"
    "                         (--system is the default for rows without one)\n"
    "  --output OUT.jsonl     one line per prompt: prompt, response, system_prompt (and history,\n"
    "                         the turns before the prompt); also OUT.md\n"
    "  --max_new_tokens N     [256]     --temperature T  [0 = greedy]\n"
    "  --top_k K              [0 = off] --top_p P        [1 = off]     --seed S [0]\n"
    "  --chat_template NAME   [recognised from the tokenizer]          --device auto|cpu|cuda\n"
    "  --chat_template_date D [26 Jul 2024] llama3.1's \"Today Date\" header (DD Mon YYYY, or today)\n"
    "  --batch_size N         [16] requests of a prompts file generated together (1: streamed;\n"
    "                         answers equal up to rounding, which may tip near-equal logits)\n"
    "  --quiet                no text on the terminal\n";

struct GenerateFlags {
  std::string model, adapter, system, prompt, prompts_file, output, chat_template, device = "auto";
  std::string chat_template_date = cst::kLlama31DefaultDate;
  cst::GenerationOptions generation;
  int batch_size = 16;
  bool quiet = false;
};

GenerateFlags parse_flags(int argc, char** argv, bool& help) {
  GenerateFlags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) cst::fail(word, " needs a value");
      return argv[++i];
    };
    auto number = [&](auto parse) {
      const std::string text = value();
      try {
        size_t used = 0;
        auto result = parse(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
        return result;
      } catch (const std::exception&) {
        cst::fail(word, ": '", text, "' is not a number");
      }
    };
    auto to_int = [](const std::string& s, size_t* used) { return std::stoi(s, used); };
    auto to_float = [](const std::string& s, size_t* used) { return std::stof(s, used); };
    if (word == "--help" || word == "-h") help = true;
    else if (word == "--adapter") flags.adapter = value();
    else if (word == "--system") flags.system = value();
    else if (word == "--prompt") flags.prompt = value();
    else if (word == "--prompts") flags.prompts_file = value();
    else if (word == "--output") flags.output = value();
    else if (word == "--chat_template") flags.chat_template = value();
    else if (word == "--chat_template_date") flags.chat_template_date = value();
    else if (word == "--device") flags.device = value();
    else if (word == "--max_new_tokens") flags.generation.max_new_tokens = number(to_int);
    else if (word == "--temperature") flags.generation.temperature = number(to_float);
    else if (word == "--top_k") flags.generation.top_k = number(to_int);
    else if (word == "--top_p") flags.generation.top_p = number(to_float);
    else if (word == "--seed") flags.generation.seed = uint64_t(number(to_int));
    else if (word == "--batch_size") flags.batch_size = number(to_int);
    else if (word == "--quiet") flags.quiet = true;
    else if (word.rfind("--", 0) == 0) cst::fail("unknown flag ", word, " (see --help)");
    else if (flags.model.empty()) flags.model = word;
    else cst::fail("unexpected argument ", word);
  }
  if (help) return flags;
  if (flags.model.empty()) cst::fail("missing model path (see --help)");
  if (flags.prompt.empty() == flags.prompts_file.empty()) cst::fail("give either --prompt or --prompts FILE");
  if (!flags.prompts_file.empty() && flags.output.empty()) cst::fail("--prompts needs --output OUT.jsonl");
  if (flags.generation.max_new_tokens < 1) cst::fail("--max_new_tokens must be >= 1");
  if (!(flags.generation.temperature >= 0) || !std::isfinite(flags.generation.temperature))
    cst::fail("--temperature must be a finite number >= 0");
  if (!(flags.generation.top_p > 0 && flags.generation.top_p <= 1)) cst::fail("--top_p must be in (0, 1]");
  if (flags.generation.top_k < 0) cst::fail("--top_k must be >= 0");
  if (flags.batch_size < 1) cst::fail("--batch_size must be >= 1");
  if (!flags.output.empty() && std::filesystem::path(flags.output).extension() == ".md")
    cst::fail("--output names the jsonl file (the markdown table goes next to it as .md)");
  return flags;
}

std::vector<cst::GenerationRequest> read_requests(const GenerateFlags& flags) {
  if (flags.prompts_file.empty()) return {{flags.system, {{"user", flags.prompt}}}};
  return cst::read_generation_requests(flags.prompts_file, flags.system);
}

int generate_all(int argc, char** argv);

// Runs the generation; on any error the temporary output files are removed before it propagates.
int run(int argc, char** argv) {
  try {
    return generate_all(argc, argv);
  } catch (...) {
    for (int i = 1; i + 1 < argc; ++i)
      if (std::string(argv[i]) == "--output") {
        std::error_code ignored;
        std::filesystem::remove(std::string(argv[i + 1]) + ".tmp", ignored);
        std::filesystem::remove(std::string(argv[i + 1]) + ".md.tmp", ignored);
      }
    throw;
  }
}

int generate_all(int argc, char** argv) {
  bool help = false;
  GenerateFlags flags = parse_flags(argc, argv, help);
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::vector<cst::GenerationRequest> requests = read_requests(flags);
  cst::ModelSession session = cst::open_model_session(flags.model, flags.device, flags.chat_template,
                                                      flags.chat_template_date, true);
  const std::unique_ptr<cst::LoraAdapter> adapter = session.load_adapter(flags.adapter);
  cst::Transformer transformer(session.config(), *session.weights, adapter.get());
  const cst::Tokenizer& tokenizer = *session.tokenizer;

  std::ofstream jsonl, markdown;
  if (!flags.output.empty()) {
    jsonl.open(flags.output + ".tmp");
    markdown.open(flags.output + ".md.tmp");
    if (!jsonl || !markdown) cst::fail("cannot write ", flags.output);
    markdown << "| prompt | response | system_prompt |\n|---|---|---|\n";
  }
  const bool stream = !flags.quiet && (requests.size() == 1 || flags.batch_size == 1);
  auto show_request = [&](const cst::GenerationRequest& request) {
    std::fprintf(stderr, "\n[system] %s\n", request.system.c_str());
    for (const cst::ChatTurn& turn : request.turns) std::fprintf(stderr, "[%s] %s\n", turn.role.c_str(), turn.content.c_str());
    std::fputs("[assistant] ", stderr);
  };
  auto write = [&](const cst::GenerationRequest& request, const std::string& response) {
    if (jsonl.is_open()) {
      nlohmann::json line = {{"prompt", request.turns.back().content}, {"response", response}, {"system_prompt", request.system}};
      if (request.turns.size() > 1) line["history"] = cst::history_json(request.turns);
      jsonl << line.dump() << "\n";
      markdown << "| " << cst::markdown_cell(cst::conversation_text(request.turns)) << " | " << cst::markdown_cell(response) << " | "
               << cst::markdown_cell(request.system) << " |\n";
    } else if (flags.quiet) {
      std::printf("%s\n", response.c_str());
    }
  };
  auto report_speed = [](int64_t tokens, double seconds, size_t requests) {
    std::fprintf(stderr, "\n(%lld tokens%s, %.1f tokens/s)\n", (long long)tokens,
                 requests > 1 ? (" for " + std::to_string(requests) + " requests").c_str() : "", double(tokens) / seconds);
  };
  if (stream) {
    for (const cst::GenerationRequest& request : requests) {
      show_request(request);
      const cst::Response answer =
          cst::respond(transformer, tokenizer, session.chat_template, request, flags.generation, [](const std::string& piece) {
            std::fputs(piece.c_str(), stderr);
            std::fflush(stderr);
          });
      report_speed(answer.tokens, answer.seconds, 1);
      write(request, answer.text);
    }
  } else {
    cst::respond_in_batches(
        transformer, tokenizer, session.chat_template, requests, flags.generation, flags.batch_size,
        [&](const std::vector<cst::GenerationRequest>& batch, const std::vector<cst::Response>& answers) {
          int64_t tokens = 0;
          for (size_t i = 0; i < batch.size(); ++i) {
            if (!flags.quiet) {
              show_request(batch[i]);
              std::fputs(answers[i].text.c_str(), stderr);
            }
            tokens += answers[i].tokens;
            write(batch[i], answers[i].text);
          }
          if (!flags.quiet) report_speed(tokens, answers.front().seconds, batch.size());
        });
  }
  if (jsonl.is_open()) {
    if (!jsonl.flush() || !markdown.flush()) cst::fail("cannot write ", flags.output);
    jsonl.close();
    markdown.close();
    std::filesystem::rename(flags.output + ".tmp", flags.output);
    std::filesystem::rename(flags.output + ".md.tmp", std::filesystem::path(flags.output).replace_extension(".md"));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cst::run_program("cst_generate", [&] { return run(argc, argv); });
}
