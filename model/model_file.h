// model.bin: one self-contained file with everything cst needs to train a model.
//
// It is a valid safetensors file (so it is mmap-able and any safetensors tool can list it):
//   tensors   the HF weights under their HF names, in the checkpoint's dtype, plus
//             "cst.tokenizer.<file name>" U8 tensors holding each tokenizer file's bytes
//             (tokenizer.model, tokenizer.json, tokenizer_config.json, added_tokens.json,
//             special_tokens_map.json; those present)
//   metadata  "format": "pt", "cst.config_json": the config.json text,
//             "cst.format_version": "1"
#pragma once
#include <map>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/safetensors.h"

namespace cst {

class ModelFile {
 public:
  // Opens model.bin, or an HF model directory (config.json + safetensors + tokenizer files).
  explicit ModelFile(const std::string& path);

  const ModelConfig& config() const { return config_; }
  const SafetensorsSet& weights() const { return *weights_; }  // HF tensor names only
  // Tokenizer files by name ("tokenizer.model", ...): bytes.
  const std::map<std::string, std::string>& tokenizer_files() const { return tokenizer_files_; }

 private:
  ModelConfig config_;
  std::unique_ptr<SafetensorsSet> weights_;
  std::map<std::string, std::string> tokenizer_files_;
};

// The files cst carries along with the weights, by name, in the order they are looked for: the
// tokenizer's, and generation_config.json so exports keep the model's generation defaults.
// Only these names are accepted from a model.bin.
inline constexpr const char* kTokenizerFileNames[] = {
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
    "special_tokens_map.json", "generation_config.json"};

// Checks that weights hold every tensor config implies, with the shape it implies and a float
// dtype (extra tensors are allowed). `where` names the source in the Error.
void check_weights_match_config(const ModelConfig& config, const SafetensorsSet& weights,
                                const std::string& where);

// cst_convert: HF model directory -> model.bin (weights keep their dtype). Written atomically.
void convert_hf_directory(const std::string& hf_directory, const std::string& model_bin_path);
// The reverse: model.bin -> HF directory (config.json, sharded safetensors, tokenizer files).
void export_hf_directory(const ModelFile& model, const std::string& hf_directory,
                         size_t max_shard_bytes);

// A byte count as transformers' max_shard_size spells it: "5GB" (10^9), "2GiB" (2^30), "500MB",
// "64KB", or plain bytes. `what` names the setting in the Error.
size_t parse_byte_size(const std::string& text, const std::string& what);

}  // namespace cst
