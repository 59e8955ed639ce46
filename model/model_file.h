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

// cst_convert: HF model directory -> model.bin (weights keep their dtype). Written atomically.
void convert_hf_directory(const std::string& hf_directory, const std::string& model_bin_path);
// The reverse: model.bin -> HF directory (config.json, sharded safetensors, tokenizer files).
void export_hf_directory(const ModelFile& model, const std::string& hf_directory,
                         size_t max_shard_bytes);

}  // namespace cst
