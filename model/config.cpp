// Reading and writing HF config.json for the two architectures cst implements.
#include "model/config.h"

#include <charconv>
#include <climits>
#include <cstdlib>
#include <map>
#include <utility>

#include "kernels/error.h"
#include "kernels/files.h"

namespace cst {

namespace {

using nlohmann::json;

// The JSON type as a reader would name it, for "got <type>" in messages.
const char* json_type_name(const json& value) {
  if (value.is_number_integer()) return "integer";
  if (value.is_number_float()) return "floating-point number";
  return value.type_name();
}

// nullptr when the key is absent or explicitly null: both mean "use the default" in HF configs.
const json* find_value(const json& object, const char* key) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return nullptr;
  return &*found;
}

const json& require_value(const json& object, const char* key, const std::string& where) {
  const json* value = find_value(object, key);
  if (!value) fail(where, ": missing required key '", key, "'");
  return *value;
}

int as_int(const json& value, const char* key, const std::string& where) {
  if (!value.is_number_integer())
    fail(where, ": key '", key, "' must be an integer, got ", json_type_name(value));
  if (value.is_number_unsigned() ? value.get<uint64_t>() > uint64_t(INT_MAX)
                                 : value.get<int64_t>() < INT_MIN || value.get<int64_t>() > INT_MAX)
    fail(where, ": key '", key, "' is out of range: ", value.dump());
  return value.get<int>();
}

int as_positive_int(const json& value, const char* key, const std::string& where) {
  int result = as_int(value, key, where);
  if (result <= 0) fail(where, ": key '", key, "' must be positive, got ", result);
  return result;
}

float as_positive_float(const json& value, const char* key, const std::string& where) {
  if (!value.is_number())
    fail(where, ": key '", key, "' must be a number, got ", json_type_name(value));
  double result = value.get<double>();
  if (!(result > 0)) fail(where, ": key '", key, "' must be positive, got ", value.dump());
  return float(result);
}

bool as_bool(const json& value, const char* key, const std::string& where) {
  if (!value.is_boolean())
    fail(where, ": key '", key, "' must be true or false, got ", json_type_name(value));
  return value.get<bool>();
}

std::string as_string(const json& value, const char* key, const std::string& where) {
  if (!value.is_string())
    fail(where, ": key '", key, "' must be a string, got ", json_type_name(value));
  return value.get<std::string>();
}

// model_type and architectures must agree on one of the two supported architectures.
std::string read_architecture(const json& config, const std::string& where) {
  std::string model_type =
      as_string(require_value(config, "model_type", where), "model_type", where);
  std::string architecture;
  if (model_type == "mistral")
    architecture = "MistralForCausalLM";
  else if (model_type == "llama")
    architecture = "LlamaForCausalLM";
  else
    fail(where, ": key 'model_type' is '", model_type, "'; cst supports 'mistral' and 'llama'");

  if (const json* listed = find_value(config, "architectures")) {
    if (!listed->is_array() || listed->size() != 1 || !(*listed)[0].is_string())
      fail(where, ": key 'architectures' must be a list of one name, got ", listed->dump());
    std::string named = (*listed)[0].get<std::string>();
    if (named != architecture)
      fail(where, ": key 'architectures' names '", named, "' but model_type '", model_type,
           "' means ", architecture);
  }
  return architecture;
}

double as_positive_double(const json& value, const std::string& key, const std::string& where) {
  if (!value.is_number())
    fail(where, ": key '", key, "' must be a number, got ", json_type_name(value));
  if (!(value.get<double>() > 0)) fail(where, ": key '", key, "' must be positive, got ", value.dump());
  return value.get<double>();
}

// The scaling of one RoPE parameter object: rope_scaling (transformers 4.x, where a type is
// required) or rope_parameters (5.x, where no type means "default"), named `key` in messages. Its
// type is "rope_type" or the older "type" (transformers takes "type" when both are there, so they
// must agree). The types implemented change the inverse frequencies only (kernels/rope.h); the
// others are refused by name: "dynamic" recomputes the frequencies from each batch's length,
// "yarn" and "longrope" also scale cos and sin.
RopeScaling read_rope_scaling(const json& parameters, const std::string& key, bool type_required,
                              const std::string& where) {
  if (!parameters.is_object())
    fail(where, ": key '", key, "' must be an object or null, got ", json_type_name(parameters));
  const json* rope_type = find_value(parameters, "rope_type");
  const json* type = find_value(parameters, "type");
  if (!rope_type && !type) {
    if (!type_required) return RopeScaling{};
    fail(where, ": key '", key, "' is set without a rope_type; cst implements RoPE types default, "
         "linear and llama3");
  }
  if (rope_type && type && *rope_type != *type)
    fail(where, ": keys '", key, ".rope_type' (", rope_type->dump(), ") and '", key, ".type' (",
         type->dump(), ") disagree");
  const std::string type_key = key + (type ? ".type" : ".rope_type");
  const std::string name = as_string(type ? *type : *rope_type, type_key.c_str(), where);
  auto field_value = [&](const char* field) -> const json& {
    const json* value = find_value(parameters, field);
    if (!value) fail(where, ": missing required key '", key, ".", field, "' of RoPE type ", name);
    return *value;
  };
  auto number = [&](const char* field) {
    return as_positive_double(field_value(field), key + "." + field, where);
  };
  RopeScaling scaling;
  if (name == "default") return scaling;
  if (name == "linear") {
    scaling.type = RopeScalingType::linear;
    scaling.factor = number("factor");
  } else if (name == "llama3") {
    scaling.type = RopeScalingType::llama3;
    scaling.factor = number("factor");
    scaling.low_freq_factor = number("low_freq_factor");
    scaling.high_freq_factor = number("high_freq_factor");
    const std::string context_key = key + ".original_max_position_embeddings";
    scaling.original_max_position_embeddings =
        as_positive_int(field_value("original_max_position_embeddings"), context_key.c_str(), where);
    if (!(scaling.high_freq_factor > scaling.low_freq_factor))
      fail(where, ": key '", key, ".high_freq_factor' (", scaling.high_freq_factor,
           ") must be greater than low_freq_factor (", scaling.low_freq_factor, ")");
  } else {
    fail(where, ": key '", type_key, "' is '", name, "'; cst implements RoPE types default, linear "
         "and llama3 (not dynamic, yarn or longrope)");
  }
  return scaling;
}

// rope_theta and rope_scaling (transformers <= 4.x), or rope_parameters holding both
// (transformers 5). When a config has both forms they must agree.
void read_rope(const json& config, ModelConfig& result, const std::string& where) {
  if (const json* value = find_value(config, "rope_theta"))
    result.rope_theta = as_positive_float(*value, "rope_theta", where);
  if (const json* scaling = find_value(config, "rope_scaling"))
    result.rope_scaling = read_rope_scaling(*scaling, "rope_scaling", true, where);
  const json* parameters = find_value(config, "rope_parameters");
  if (!parameters) return;
  RopeScaling scaling = read_rope_scaling(*parameters, "rope_parameters", false, where);
  if (find_value(config, "rope_scaling") && scaling != result.rope_scaling)
    fail(where, ": keys 'rope_scaling' and 'rope_parameters' describe different RoPE scalings");
  result.rope_scaling = scaling;
  if (const json* value = find_value(*parameters, "rope_theta"))
    result.rope_theta = as_positive_float(*value, "rope_parameters.rope_theta", where);
}

void refuse_unsupported_features(const json& config, const std::string& where) {
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    const json* value = find_value(config, key);
    if (value && as_bool(*value, key, where))
      fail(where, ": key '", key, "' is true; cst implements bias-free projections only");
  }
  // transformers applies attention dropout in training (trl's disable_dropout does not reach it).
  if (const json* dropout = find_value(config, "attention_dropout")) {
    if (!dropout->is_number())
      fail(where, ": key 'attention_dropout' must be a number, got ", json_type_name(*dropout));
    if (dropout->get<double>() != 0)
      fail(where, ": key 'attention_dropout' is ", dropout->dump(), "; cst implements attention without dropout");
  }
  if (const json* slices = find_value(config, "pretraining_tp"))
    as_positive_int(*slices, "pretraining_tp", where);  // ignored otherwise (model/config.h)
  if (const json* act = find_value(config, "hidden_act")) {
    std::string name = as_string(*act, "hidden_act", where);
    if (name != "silu")
      fail(where, ": key 'hidden_act' is '", name, "'; cst implements the SiLU MLP only");
  }
}

// Mistral's attention window; Llama has none, and "use_sliding_window": false switches it off.
int read_sliding_window(const json& config, const std::string& architecture,
                        const std::string& where) {
  if (architecture != "MistralForCausalLM") return 0;
  if (const json* use = find_value(config, "use_sliding_window"))
    if (!as_bool(*use, "use_sliding_window", where)) return 0;
  const json* window = find_value(config, "sliding_window");
  return window ? as_positive_int(*window, "sliding_window", where) : 0;
}

void read_special_tokens(const json& config, ModelConfig& result, const std::string& where) {
  if (const json* bos = find_value(config, "bos_token_id"))
    result.bos_token_id = as_int(*bos, "bos_token_id", where);
  const json* eos = find_value(config, "eos_token_id");
  if (!eos) return;
  if (eos->is_array()) {
    if (eos->empty()) fail(where, ": key 'eos_token_id' is an empty list");
    for (const json& id : *eos) result.eos_token_ids.push_back(as_int(id, "eos_token_id", where));
  } else {
    result.eos_token_ids.push_back(as_int(*eos, "eos_token_id", where));
  }
  result.eos_token_id = result.eos_token_ids.front();
}

void read_shapes(const json& config, ModelConfig& result, const std::string& where) {
  auto required = [&](const char* key) {
    return as_positive_int(require_value(config, key, where), key, where);
  };
  result.vocab_size = required("vocab_size");
  result.hidden_size = required("hidden_size");
  result.intermediate_size = required("intermediate_size");
  result.num_layers = required("num_hidden_layers");
  result.num_heads = required("num_attention_heads");
  result.max_position_embeddings = required("max_position_embeddings");
  result.rms_norm_eps =
      as_positive_float(require_value(config, "rms_norm_eps", where), "rms_norm_eps", where);

  const json* kv_heads = find_value(config, "num_key_value_heads");
  result.num_kv_heads =
      kv_heads ? as_positive_int(*kv_heads, "num_key_value_heads", where) : result.num_heads;
  if (result.num_heads % result.num_kv_heads != 0)
    fail(where, ": key 'num_key_value_heads' (", result.num_kv_heads,
         ") must divide num_attention_heads (", result.num_heads, ")");

  if (const json* head_dim = find_value(config, "head_dim")) {
    result.head_dim = as_positive_int(*head_dim, "head_dim", where);
  } else {
    if (result.hidden_size % result.num_heads != 0)
      fail(where, ": key 'hidden_size' (", result.hidden_size,
           ") is not divisible by num_attention_heads (", result.num_heads,
           ") and no head_dim is given");
    result.head_dim = result.hidden_size / result.num_heads;
  }
  if (result.head_dim % 2 != 0)
    fail(where, ": head dimension ", result.head_dim, " must be even for RoPE");
}

// transformers 5 writes "dtype" where 4.x wrote "torch_dtype".
const char* dtype_key(const json& config) {
  return config.contains("dtype") && !config.contains("torch_dtype") ? "dtype" : "torch_dtype";
}

// A float as its shortest decimal text, so 1e-5f is written as 1e-05 and not 9.99999974e-06.
double float_as_written(float value) {
  char text[32];
  auto [end, error] = std::to_chars(text, text + sizeof(text), value);
  *end = '\0';
  return std::strtod(text, nullptr);
}

// The RoPE scaling keys as transformers writes them (the type and the parameters it uses).
json rope_scaling_json(const RopeScaling& scaling) {
  json result = {{"rope_type", rope_scaling_type_name(scaling.type)}};
  if (scaling.type != RopeScalingType::none) result["factor"] = scaling.factor;
  if (scaling.type == RopeScalingType::llama3) {
    result["low_freq_factor"] = scaling.low_freq_factor;
    result["high_freq_factor"] = scaling.high_freq_factor;
    result["original_max_position_embeddings"] = scaling.original_max_position_embeddings;
  }
  return result;
}

// transformers 4.x: rope_theta and rope_scaling (null when unscaled); 5.x: rope_parameters with both.
std::vector<std::pair<json::json_pointer, json>> rope_entries(const ModelConfig& config,
                                                              bool rope_in_parameters) {
  json scaling = rope_scaling_json(config.rope_scaling);
  if (rope_in_parameters) {
    scaling["rope_theta"] = float_as_written(config.rope_theta);
    return {{json::json_pointer("/rope_parameters"), scaling}};
  }
  return {{json::json_pointer("/rope_theta"), float_as_written(config.rope_theta)},
          {json::json_pointer("/rope_scaling"),
           config.rope_scaling.type == RopeScalingType::none ? json(nullptr) : scaling}};
}

// The config.json entries cst owns, as (JSON pointer, value) pairs derived from the fields.
std::vector<std::pair<json::json_pointer, json>> owned_entries(const ModelConfig& config,
                                                               bool rope_in_parameters,
                                                               const char* dtype_json_key) {
  bool mistral = config.architecture == "MistralForCausalLM";
  auto optional_id = [](int id) { return id < 0 ? json(nullptr) : json(id); };
  json eos = optional_id(config.eos_token_id);
  if (config.eos_token_ids.size() > 1 && config.eos_token_ids.front() == config.eos_token_id)
    eos = config.eos_token_ids;
  std::vector<std::pair<json::json_pointer, json>> entries = {
      {json::json_pointer("/architectures"), json::array({config.architecture})},
      {json::json_pointer("/model_type"), mistral ? "mistral" : "llama"},
      {json::json_pointer("/vocab_size"), config.vocab_size},
      {json::json_pointer("/hidden_size"), config.hidden_size},
      {json::json_pointer("/intermediate_size"), config.intermediate_size},
      {json::json_pointer("/num_hidden_layers"), config.num_layers},
      {json::json_pointer("/num_attention_heads"), config.num_heads},
      {json::json_pointer("/num_key_value_heads"), config.num_kv_heads},
      {json::json_pointer("/head_dim"), config.head_dim},
      {json::json_pointer("/rms_norm_eps"), float_as_written(config.rms_norm_eps)},
      {json::json_pointer("/max_position_embeddings"), config.max_position_embeddings},
      {json::json_pointer("/tie_word_embeddings"), config.tie_word_embeddings},
      {json::json_pointer("/bos_token_id"), optional_id(config.bos_token_id)},
      {json::json_pointer("/eos_token_id"), eos},
  };
  for (auto& entry : rope_entries(config, rope_in_parameters)) entries.push_back(entry);
  if (mistral)
    entries.push_back({json::json_pointer("/sliding_window"),
                       config.sliding_window > 0 ? json(config.sliding_window) : json(nullptr)});
  if (!config.torch_dtype.empty())
    entries.push_back({json::json_pointer(std::string("/") + dtype_json_key), config.torch_dtype});
  return entries;
}

}  // namespace

ModelConfig parse_model_config(const nlohmann::json& config_json, const std::string& where) {
  if (!config_json.is_object())
    fail(where, ": config.json must be a JSON object, got ", json_type_name(config_json));
  ModelConfig result;
  result.architecture = read_architecture(config_json, where);
  refuse_unsupported_features(config_json, where);
  read_shapes(config_json, result, where);
  read_rope(config_json, result, where);
  result.sliding_window = read_sliding_window(config_json, result.architecture, where);
  if (const json* tie = find_value(config_json, "tie_word_embeddings"))
    result.tie_word_embeddings = as_bool(*tie, "tie_word_embeddings", where);
  read_special_tokens(config_json, result, where);
  const char* dtype_json_key = dtype_key(config_json);
  if (const json* dtype = find_value(config_json, dtype_json_key))
    result.torch_dtype = as_string(*dtype, dtype_json_key, where);
  result.original = config_json;
  return result;
}

ModelConfig load_model_config(const std::string& config_json_path) {
  json parsed = json::parse(read_file_bytes(config_json_path), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) fail(config_json_path, ": not valid JSON");
  return parse_model_config(parsed, config_json_path);
}

// Starts from the config as read and rewrites only the entries whose field was changed since,
// so an unedited config comes back exactly as it came in. A config built in code (no original)
// gets every entry cst knows.
nlohmann::json model_config_to_json(const ModelConfig& config) {
  json result = config.original.is_object() ? config.original : json::object();
  bool rope_in_parameters = result.contains("rope_parameters") && !result.contains("rope_theta");
  const char* dtype_json_key = dtype_key(result);
  std::map<std::string, json> as_read_entries;
  if (config.original.is_object()) {
    ModelConfig as_read = parse_model_config(config.original, "config as read");
    for (auto& [pointer, value] : owned_entries(as_read, rope_in_parameters, dtype_json_key))
      as_read_entries[pointer.to_string()] = value;
  }
  for (auto& [pointer, value] : owned_entries(config, rope_in_parameters, dtype_json_key)) {
    auto before = as_read_entries.find(pointer.to_string());
    if (before == as_read_entries.end() || before->second != value) result[pointer] = value;
  }
  return result;
}

}  // namespace cst
