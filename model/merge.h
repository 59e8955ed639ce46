// Merging a LoRA adapter into the base weights (PEFT's merge_and_unload):
//   W' = W + scaling * B A        for every adapted projection, scaling = alpha / r (rslora: / sqrt r)
// computed in f32 and stored back in the checkpoint's dtype. The result is an ordinary HF model
// directory (config.json, sharded safetensors, tokenizer files) that transformers loads.
#pragma once
#include <string>

#include "model/model_file.h"

namespace cst {

void write_merged_hf_directory(const ModelFile& model, const std::string& adapter_dir,
                               const std::string& output_dir, size_t max_shard_bytes);

// The same, written as a model.bin (via a temporary HF directory next to it).
void write_merged_model_bin(const ModelFile& model, const std::string& adapter_dir,
                            const std::string& model_bin_path);

}  // namespace cst
