// cst_convert: Hugging Face model directory <-> model.bin.
//
//   cst_convert <hf_model_dir> <model.bin>
//   cst_convert --to-hf <model.bin> <out_dir> [--max_shard_size 5GB]
//
// Exit codes: 0 done, 1 error (bad input, I/O), 2 usage.
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "model/model_file.h"

namespace {

const char* kUsage =
    "usage: cst_convert <hf_model_dir> <model.bin>\n"
    "       cst_convert --to-hf <model.bin> <out_dir> [--max_shard_size 5GB]\n"
    "\n"
    "The first form packs a Hugging Face model directory (config.json, model.safetensors or\n"
    "sharded safetensors with model.safetensors.index.json, tokenizer files) into one model.bin;\n"
    "weights keep their dtype. The second form unpacks a model.bin into a Hugging Face directory\n"
    "that transformers can load. --max_shard_size takes transformers' spelling (5GB = 5*10^9\n"
    "bytes, 2GiB = 2*2^30 bytes; default 5GB).\n";

struct UsageError {
  std::string message;
};

struct Arguments {
  bool to_hf = false;
  std::string input;
  std::string output;
  size_t max_shard_bytes = 5'000'000'000;  // transformers' default max_shard_size "5GB"
};

Arguments parse_arguments(const std::vector<std::string>& args) {
  Arguments result;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--to-hf") {
      result.to_hf = true;
    } else if (args[i] == "--max_shard_size") {
      if (i + 1 == args.size()) throw UsageError{"--max_shard_size needs a value"};
      try {
        result.max_shard_bytes = cst::parse_byte_size(args[++i], "--max_shard_size");
      } catch (const cst::Error& error) {
        throw UsageError{error.what()};
      }
    } else if (args[i].starts_with("-")) {
      throw UsageError{"unknown option " + args[i]};
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() != 2) throw UsageError{"expected an input and an output path"};
  if (!result.to_hf && args.size() != 2)
    throw UsageError{"--max_shard_size applies to --to-hf only"};
  result.input = positional[0];
  result.output = positional[1];
  return result;
}

// "tensors 291, parameters 7241732096, dtype bf16, bytes 14483464192"
std::string summary(const cst::ModelFile& model, uintmax_t bytes) {
  uint64_t parameters = 0;
  std::set<std::string> dtypes;
  const auto tensors = model.weights().tensors();
  for (const cst::TensorInfo* tensor : tensors) {
    parameters += uint64_t(tensor->numel());
    dtypes.insert(cst::dtype_name(tensor->dtype));
  }
  std::string dtype_list;
  for (const std::string& dtype : dtypes) dtype_list += (dtype_list.empty() ? "" : "+") + dtype;
  return "tensors " + std::to_string(tensors.size()) + ", parameters " +
         std::to_string(parameters) + ", dtype " + dtype_list + ", bytes " + std::to_string(bytes);
}

uintmax_t directory_bytes(const std::string& directory) {
  uintmax_t total = 0;
  for (const auto& entry : std::filesystem::directory_iterator(directory))
    if (entry.is_regular_file()) total += entry.file_size();
  return total;
}

void run(const Arguments& arguments) {
  if (arguments.to_hf) {
    cst::ModelFile model(arguments.input);
    cst::export_hf_directory(model, arguments.output, arguments.max_shard_bytes);
    std::printf("wrote %s: %s\n", arguments.output.c_str(),
                summary(model, directory_bytes(arguments.output)).c_str());
  } else {
    cst::convert_hf_directory(arguments.input, arguments.output);
    cst::ModelFile model(arguments.output);  // reopening validates what was written
    std::printf("wrote %s: %s\n", arguments.output.c_str(),
                summary(model, std::filesystem::file_size(arguments.output)).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  try {
    run(parse_arguments(args));
    return 0;
  } catch (const UsageError& error) {
    std::fprintf(stderr, "cst_convert: %s\n\n%s", error.message.c_str(), kUsage);
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "cst_convert: error: %s\n", error.what());
    return 1;
  }
}
