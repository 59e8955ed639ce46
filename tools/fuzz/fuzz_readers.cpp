// Mutation fuzzing of the readers that take files from users: datasets (parquet, json, jsonl),
// safetensors, model.bin (with its weights and embedded tokenizer loaded as cst_train loads
// them) and tokenizers (tokenizer.json, sentencepiece's tokenizer.model).
//
// Each iteration damages a copy of a good file (flipped bits, random bytes, a truncation,
// inserted or erased bytes, a 32- or 64-bit field overwritten with an extreme value) and reads
// it. Whatever the damage, a reader must either accept the file or throw cst::Error: anything
// else (another exception, a crash) is a finding. Built with AddressSanitizer and
// UndefinedBehaviorSanitizer (`make fuzz`), an out-of-bounds read or an overflow on the way is
// one too. The case being read is kept in fuzz_readers_case.<extension> in the working
// directory, so a crash leaves its input behind.
//
// Usage: fuzz_readers table|safetensors|model|tokenizer FILE [ITERATIONS] [SEED]
// (for `model`, FILE may be an HF model directory: it is converted to a model.bin first)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include "data/table.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "kernels/files.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace cst {
namespace {

// One to four damages at random places.
std::string damage(std::string bytes, std::mt19937_64& random) {
  const int damages = 1 + int(random() % 4);
  for (int d = 0; d < damages && !bytes.empty(); ++d) {
    const size_t at = random() % bytes.size();
    switch (random() % 7) {
      case 0: bytes[at] = char(bytes[at] ^ (1 << (random() % 8))); break;
      case 1: bytes[at] = char(random()); break;
      case 2: bytes.resize(at); break;
      case 3: bytes.insert(at, std::string(1 + random() % 8, char(random()))); break;
      case 4: bytes.erase(at, 1 + random() % 16); break;
      case 5: {
        const uint32_t extremes[] = {0u, 1u, 255u, 1u << 20, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu};
        const uint32_t value = extremes[random() % std::size(extremes)];
        if (at + sizeof(value) <= bytes.size()) std::memcpy(&bytes[at], &value, sizeof(value));
        break;
      }
      default: {
        const uint64_t value = random();
        if (at + sizeof(value) <= bytes.size()) std::memcpy(&bytes[at], &value, sizeof(value));
      }
    }
  }
  return bytes;
}

// Reads `path` the way the programs do.
void read_as(const std::string& kind, const std::string& path, const std::string& bytes) {
  if (kind == "table") {
    read_table(path, {"system", "prompt", "chosen", "rejected", "messages", "text"});
  } else if (kind == "safetensors") {
    SafetensorsFile file(path);
    for (const TensorInfo& tensor : file.tensors())
      if (tensor.dtype == DType::f32 || tensor.dtype == DType::bf16 || tensor.dtype == DType::f16)
        check_finite(tensor, path);
  } else if (kind == "model") {
    ModelFile model(path);
    ModelWeights weights(model, Device::cpu, DType::f32);
    Tokenizer tokenizer(model.tokenizer_files());
    tokenizer.decode(tokenizer.encode("Hello world, h\xc3\xa9llo 123"));
  } else if (kind == "tokenizer") {
    const bool sentencepiece = path.ends_with(".model");
    Tokenizer tokenizer({{sentencepiece ? "tokenizer.model" : "tokenizer.json", bytes}});
    tokenizer.decode(tokenizer.encode("Hello world, h\xc3\xa9llo 123 <|im_start|>"));
  } else {
    fail("unknown kind '", kind, "' (table, safetensors, model or tokenizer)");
  }
}

// An HF model directory given for `model` is first converted to the model.bin to damage.
int run(const std::string& kind, std::string good_path, int iterations, uint64_t seed) {
  if (kind == "model" && std::filesystem::is_directory(good_path)) {
    convert_hf_directory(good_path, "fuzz_readers_model.bin");
    good_path = "fuzz_readers_model.bin";
  }
  const std::string good = read_file_bytes(good_path);
  read_as(kind, good_path, good);  // the undamaged file must be accepted
  const size_t dot = good_path.rfind('.');
  const std::string extension = dot == std::string::npos ? "" : good_path.substr(dot);
  const std::string case_path = "fuzz_readers_case" + extension;
  std::mt19937_64 random(seed);
  std::map<std::string, int> errors;  // by the first 50 characters of the message
  int accepted = 0, findings = 0;
  for (int i = 0; i < iterations; ++i) {
    const std::string bytes = damage(good, random);
    write_file_bytes(case_path, bytes);
    try {
      read_as(kind, case_path, bytes);
      ++accepted;
    } catch (const Error& error) {
      ++errors[std::string(error.what()).substr(0, 50)];
    } catch (const std::exception& other) {
      ++findings;
      const std::string kept = "fuzz_readers_finding" + std::to_string(findings) + extension;
      write_file_bytes(kept, bytes);
      std::printf("FINDING: iteration %d threw %s, not cst::Error (input kept in %s)\n", i,
                  other.what(), kept.c_str());
    }
  }
  std::remove(case_path.c_str());
  int error_count = 0;
  for (const auto& [message, count] : errors) error_count += count;
  std::printf("%s %s: %d damaged copies, %d accepted, %d refused with cst::Error (%zu distinct "
              "messages), %d findings\n",
              kind.c_str(), good_path.c_str(), iterations, accepted, error_count, errors.size(),
              findings);
  return findings == 0 ? 0 : 1;
}

}  // namespace
}  // namespace cst

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::fprintf(stderr, "usage: fuzz_readers table|safetensors|model|tokenizer FILE [ITERATIONS] [SEED]\n");
    return 2;
  }
  try {
    return cst::run(argv[1], argv[2], argc > 3 ? std::atoi(argv[3]) : 1000,
                    argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "fuzz_readers: %s\n", error.what());
    return 1;
  }
}
