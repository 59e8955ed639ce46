// The model's hyperparameters, read from a Hugging Face config.json (MistralForCausalLM or
// LlamaForCausalLM, Llama 3 / 3.1 / 3.2 included). Anything cst does not implement is refused
// here, at the boundary. pretraining_tp is ignored, as newer transformers do (4.42.4 splits the
// same products into that many slices: the same values up to summation order).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/rope.h"

namespace cst {

struct ModelConfig {
  std::string architecture;      // "MistralForCausalLM" or "LlamaForCausalLM"
  int vocab_size = 0;            // V
  int hidden_size = 0;           // C
  int intermediate_size = 0;     // F, the MLP width
  int num_layers = 0;            // L
  int num_heads = 0;             // H
  int num_kv_heads = 0;          // KVH (null in config.json = H)
  int head_dim = 0;              // D (absent = C / H)
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;   // rope_theta, or rope_parameters.rope_theta (transformers v5)
  RopeScaling rope_scaling;      // rope_scaling, or rope_parameters (v5): default, linear or llama3
  int sliding_window = 0;        // 0 = none (null, absent, or Llama)
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;         // -1 = absent
  // eos_token_id may be a list (Llama 3.1: [128001, 128008, 128009]); generation stops at any of
  // eos_token_ids, as transformers' generate() does. eos_token_id is the first, for where one id
  // is needed.
  int eos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;       // as written ("bfloat16", "float32", ...), may be empty

  nlohmann::json original;       // config.json as read, so export writes back what came in
};

// `where` names the source in error messages (a path).
ModelConfig parse_model_config(const nlohmann::json& config_json, const std::string& where);
ModelConfig load_model_config(const std::string& config_json_path);
// The config.json text for this config (the original with any edits applied).
nlohmann::json model_config_to_json(const ModelConfig& config);

}  // namespace cst
