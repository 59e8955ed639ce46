// Reading and writing HF config.json for the two architectures cst implements.
#include "model/config.h"

#include <charconv>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "kernels/error.h"

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

// rope_theta (transformers <= 4.x) or rope_parameters.rope_theta (transformers 5). Any RoPE
// scaling changes the frequencies, which cst does not implement, so it is refused.
float read_rope_theta(const json& config, const std::string& where) {
  auto refuse_scaling_type = [&](const json& parameters, const char* key) {
    for (const char* type_key : {"rope_type", "type"}) {
      const json* type = find_value(parameters, type_key);
      if (!type) continue;
      if (!type->is_string() || type->get<std::string>() != "default")
        fail(where, ": key '", key, ".", type_key, "' is ", type->dump(),
             "; cst implements only unscaled RoPE (\"default\")");
    }
  };
  if (const json* scaling = find_value(config, "rope_scaling")) {
    if (!scaling->is_object())
      fail(where, ": key 'rope_scaling' must be an object or null, got ", json_type_name(*scaling));
    if (!find_value(*scaling, "rope_type") && !find_value(*scaling, "type"))
      fail(where, ": key 'rope_scaling' is set without a type; cst implements only unscaled RoPE");
    refuse_scaling_type(*scaling, "rope_scaling");
  }
  float theta = 10000.0f;  // the default of both MistralConfig and LlamaConfig
  if (const json* value = find_value(config, "rope_theta"))
    theta = as_positive_float(*value, "rope_theta", where);
  if (const json* parameters = find_value(config, "rope_parameters")) {
    if (!parameters->is_object())
      fail(where, ": key 'rope_parameters' must be an object, got ", json_type_name(*parameters));
    refuse_scaling_type(*parameters, "rope_parameters");
    if (const json* value = find_value(*parameters, "rope_theta"))
      theta = as_positive_float(*value, "rope_parameters.rope_theta", where);
  }
  return theta;
}

void refuse_unsupported_features(const json& config, const std::string& where) {
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    const json* value = find_value(config, key);
    if (value && as_bool(*value, key, where))
      fail(where, ": key '", key, "' is true; cst implements bias-free projections only");
  }
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
      {json::json_pointer(rope_in_parameters ? "/rope_parameters/rope_theta" : "/rope_theta"),
       float_as_written(config.rope_theta)},
      {json::json_pointer("/max_position_embeddings"), config.max_position_embeddings},
      {json::json_pointer("/tie_word_embeddings"), config.tie_word_embeddings},
      {json::json_pointer("/bos_token_id"), optional_id(config.bos_token_id)},
      {json::json_pointer("/eos_token_id"), eos},
  };
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
  result.rope_theta = read_rope_theta(config_json, where);
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
  std::ifstream file(config_json_path, std::ios::binary);
  if (!file) fail(config_json_path, ": cannot open config.json");
  std::stringstream text;
  text << file.rdbuf();
  json parsed = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
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
