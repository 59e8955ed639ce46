// cst_export model.bin --adapter DIR --output_dir OUT [--max_shard_size 5GB] [--model_bin]
// Merges a trained LoRA adapter into the base weights and writes an HF model directory
// (config.json, sharded safetensors, tokenizer files) that transformers loads, or a model.bin.
#include "kernels/program.h"
#include <cstdio>
#include <string>

#include "model/merge.h"

namespace {

const char* kUsage =
    "usage: cst_export model.bin --adapter DIR --output_dir OUT [--max_shard_size 5GB]\n"
    "       cst_export model.bin --adapter DIR --model_bin OUT.bin\n"
    "Merges the adapter (W += scaling * B A) and writes an HF directory or a model.bin.\n";

int run(int argc, char** argv) {
  std::string model_path, adapter_dir, output_dir, model_bin, shard_size = "5GB";
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) cst::fail(word, " needs a value");
      return argv[++i];
    };
    if (word == "--help" || word == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (word == "--adapter") adapter_dir = value();
    else if (word == "--output_dir") output_dir = value();
    else if (word == "--model_bin") model_bin = value();
    else if (word == "--max_shard_size") shard_size = value();
    else if (word.rfind("--", 0) == 0) cst::fail("unknown flag ", word);
    else if (model_path.empty()) model_path = word;
    else cst::fail("unexpected argument ", word);
  }
  if (model_path.empty() || adapter_dir.empty() || (output_dir.empty() == model_bin.empty())) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  cst::ModelFile model(model_path);
  if (!output_dir.empty()) {
    cst::write_merged_hf_directory(model, adapter_dir, output_dir, cst::parse_byte_size(shard_size, "--max_shard_size"));
    std::printf("wrote merged model to %s\n", output_dir.c_str());
  } else {
    cst::write_merged_model_bin(model, adapter_dir, model_bin);
    std::printf("wrote merged model to %s\n", model_bin.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cst::run_program("cst_export", [&] { return run(argc, argv); });
}
