// model/config: real checkpoints' config.json against what transformers derives from them
// (tests/fixtures/config/, made by tools/python/make_safetensors_fixtures.py), plus one small
// JSON snippet per accepted variant and per refusal.
#include <gtest/gtest.h>

#include <fstream>

#include "kernels/error.h"
#include "model/config.h"

namespace cst {
namespace {

using nlohmann::json;

const std::string kConfigFixtures = std::string(CST_SOURCE_DIR) + "/tests/fixtures/config/";
const char* kWhere = "snippet/config.json";

// A tiny but complete Mistral config.json, as transformers writes it.
json tiny_mistral() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 32, "hidden_act": "silu",
    "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"
  })");
}

json tiny_llama() {
  json config = tiny_mistral();
  config["architectures"] = {"LlamaForCausalLM"};
  config["model_type"] = "llama";
  config.erase("sliding_window");
  config["attention_bias"] = false;
  config["mlp_bias"] = false;
  config["rope_scaling"] = nullptr;
  return config;
}

// Refusals must name the file and the offending key.
void expect_refused(const json& config, const std::string& key) {
  try {
    parse_model_config(config, kWhere);
    ADD_FAILURE() << "accepted: " << config.dump();
  } catch (const Error& error) {
    std::string message = error.what();
    EXPECT_NE(message.find(kWhere), std::string::npos) << message;
    EXPECT_NE(message.find(key), std::string::npos) << "expected '" << key << "' in: " << message;
  }
}

TEST(Config, RealCheckpointsMatchTransformers) {
  std::ifstream file(kConfigFixtures + "expected.json");
  ASSERT_TRUE(file) << "missing fixture; run tools/python/make_safetensors_fixtures.py";
  json expected_all = json::parse(file);
  ASSERT_EQ(expected_all.size(), 4u);
  for (const auto& [name, expected] : expected_all.items()) {
    SCOPED_TRACE(name);
    ModelConfig config = load_model_config(kConfigFixtures + name + ".json");
    EXPECT_EQ(config.architecture, expected["architecture"]);
    EXPECT_EQ(config.vocab_size, expected["vocab_size"]);
    EXPECT_EQ(config.hidden_size, expected["hidden_size"]);
    EXPECT_EQ(config.intermediate_size, expected["intermediate_size"]);
    EXPECT_EQ(config.num_layers, expected["num_layers"]);
    EXPECT_EQ(config.num_heads, expected["num_heads"]);
    EXPECT_EQ(config.num_kv_heads, expected["num_kv_heads"]);
    EXPECT_EQ(config.head_dim, expected["head_dim"]);
    // Exact: the fields are floats, and these decimal values round to the same float both ways.
    EXPECT_EQ(config.rms_norm_eps, expected["rms_norm_eps"].get<float>());
    EXPECT_EQ(config.rope_theta, expected["rope_theta"].get<float>());
    EXPECT_EQ(config.sliding_window, expected["sliding_window"]);
    EXPECT_EQ(config.max_position_embeddings, expected["max_position_embeddings"]);
    EXPECT_EQ(config.tie_word_embeddings, expected["tie_word_embeddings"]);
    EXPECT_EQ(config.bos_token_id, expected["bos_token_id"]);
    EXPECT_EQ(config.eos_token_ids, expected["eos_token_ids"].get<std::vector<int>>());
    EXPECT_EQ(config.eos_token_id, expected["eos_token_ids"][0]);
    EXPECT_EQ(config.torch_dtype, expected["torch_dtype"]);
  }
}

TEST(Config, TinyMistralFields) {
  ModelConfig config = parse_model_config(tiny_mistral(), kWhere);
  EXPECT_EQ(config.architecture, "MistralForCausalLM");
  EXPECT_EQ(config.head_dim, 16);
  EXPECT_EQ(config.num_kv_heads, 2);
  EXPECT_EQ(config.sliding_window, 32);
  EXPECT_EQ(config.eos_token_id, 2);
  EXPECT_EQ(config.original, tiny_mistral());
}

TEST(Config, RopeParametersOfTransformersV5) {
  json config = tiny_mistral();
  config.erase("rope_theta");
  config["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  config.erase("torch_dtype");
  config["dtype"] = "bfloat16";  // v5 renamed torch_dtype
  ModelConfig parsed = parse_model_config(config, kWhere);
  EXPECT_EQ(parsed.rope_theta, 1e6f);
  EXPECT_EQ(parsed.torch_dtype, "bfloat16");
}

TEST(Config, RopeThetaDefaultsLikeTransformers) {
  json config = tiny_mistral();
  config.erase("rope_theta");
  EXPECT_EQ(parse_model_config(config, kWhere).rope_theta, 10000.0f);
}

TEST(Config, HeadDimPresentOrAbsent) {
  json config = tiny_mistral();
  config["head_dim"] = 32;  // Mistral-Nemo style: heads * head_dim != hidden
  EXPECT_EQ(parse_model_config(config, kWhere).head_dim, 32);
  config["head_dim"] = nullptr;
  EXPECT_EQ(parse_model_config(config, kWhere).head_dim, 16);
}

TEST(Config, SlidingWindowVariants) {
  json config = tiny_mistral();
  config["sliding_window"] = nullptr;
  EXPECT_EQ(parse_model_config(config, kWhere).sliding_window, 0);
  config["sliding_window"] = 32;
  config["use_sliding_window"] = false;
  EXPECT_EQ(parse_model_config(config, kWhere).sliding_window, 0);
  json llama = tiny_llama();
  llama["sliding_window"] = 32;  // Llama attends to everything whatever the key says
  EXPECT_EQ(parse_model_config(llama, kWhere).sliding_window, 0);
}

TEST(Config, KeyValueHeadsNullOrAbsentMeanAllHeads) {
  json config = tiny_llama();
  config["num_key_value_heads"] = nullptr;
  EXPECT_EQ(parse_model_config(config, kWhere).num_kv_heads, 4);
  config.erase("num_key_value_heads");
  EXPECT_EQ(parse_model_config(config, kWhere).num_kv_heads, 4);
}

TEST(Config, TiedEmbeddingsAndSpecialTokens) {
  json config = tiny_llama();
  config.erase("tie_word_embeddings");
  config.erase("bos_token_id");
  config["eos_token_id"] = {7, 9};
  ModelConfig parsed = parse_model_config(config, kWhere);
  EXPECT_FALSE(parsed.tie_word_embeddings);
  EXPECT_EQ(parsed.bos_token_id, -1);
  EXPECT_EQ(parsed.eos_token_id, 7);
  EXPECT_EQ(parsed.eos_token_ids, (std::vector<int>{7, 9}));
  config["tie_word_embeddings"] = true;
  EXPECT_TRUE(parse_model_config(config, kWhere).tie_word_embeddings);
}

TEST(Config, RefusesUnknownArchitectures) {
  json config = tiny_mistral();
  config["model_type"] = "mixtral";
  expect_refused(config, "model_type");
  config = tiny_mistral();
  config["architectures"] = {"Qwen2ForCausalLM"};
  expect_refused(config, "architectures");
  config = tiny_mistral();
  config["architectures"] = {"LlamaForCausalLM"};  // disagrees with model_type mistral
  expect_refused(config, "architectures");
}

// Llama 3.1 8B Instruct's config.json as published (Llama 3.2 1B / 3B differ in sizes, factor 32
// and tied embeddings).
json llama31_8b_instruct() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256
  })");
}

json llama32_1b_instruct() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
  })");
}

TEST(Config, Llama31And32AsPublished) {
  ModelConfig llama31 = parse_model_config(llama31_8b_instruct(), kWhere);
  EXPECT_EQ(llama31.rope_theta, 500000.0f);
  EXPECT_EQ(llama31.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_EQ(llama31.rope_scaling.factor, 8.0);
  EXPECT_EQ(llama31.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(llama31.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(llama31.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(llama31.max_position_embeddings, 131072);
  EXPECT_EQ(llama31.bos_token_id, 128000);
  EXPECT_EQ(llama31.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(llama31.eos_token_id, 128001);
  EXPECT_EQ(llama31.head_dim, 128);
  EXPECT_FALSE(llama31.tie_word_embeddings);

  ModelConfig llama32 = parse_model_config(llama32_1b_instruct(), kWhere);
  EXPECT_EQ(llama32.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_EQ(llama32.rope_scaling.factor, 32.0);
  EXPECT_EQ(llama32.head_dim, 64);
  EXPECT_EQ(llama32.num_kv_heads, 8);
  EXPECT_TRUE(llama32.tie_word_embeddings);
}

TEST(Config, RopeScalingSpellings) {
  json config = llama31_8b_instruct();
  const RopeScaling llama3 = parse_model_config(config, kWhere).rope_scaling;
  config["rope_scaling"].erase("rope_type");
  config["rope_scaling"]["type"] = "llama3";  // the older key
  EXPECT_EQ(parse_model_config(config, kWhere).rope_scaling, llama3);
  config["rope_scaling"]["rope_type"] = "llama3";  // both, agreeing
  EXPECT_EQ(parse_model_config(config, kWhere).rope_scaling, llama3);

  json v5 = llama31_8b_instruct();  // transformers 5: theta and scaling in rope_parameters
  v5["rope_parameters"] = v5["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  ModelConfig parsed = parse_model_config(v5, kWhere);
  EXPECT_EQ(parsed.rope_scaling, llama3);
  EXPECT_EQ(parsed.rope_theta, 500000.0f);
  v5["rope_scaling"] = config["rope_scaling"];  // both forms, agreeing
  EXPECT_EQ(parse_model_config(v5, kWhere).rope_scaling, llama3);

  json linear = tiny_llama();
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  ModelConfig linear_config = parse_model_config(linear, kWhere);
  EXPECT_EQ(linear_config.rope_scaling.type, RopeScalingType::linear);
  EXPECT_EQ(linear_config.rope_scaling.factor, 4.0);
  for (json none : {json(nullptr), json{{"rope_type", "default"}}}) {
    linear["rope_scaling"] = none;
    EXPECT_EQ(parse_model_config(linear, kWhere).rope_scaling, RopeScaling{});
  }
}

TEST(Config, RefusesRopeScalingTypesNotImplemented) {
  for (const char* type : {"dynamic", "yarn", "longrope", "ntk"}) {
    SCOPED_TRACE(type);
    json config = tiny_llama();
    config["rope_scaling"] = {{"rope_type", type}, {"factor", 8.0}};
    expect_refused(config, std::string("rope_scaling.rope_type' is '") + type);
    config["rope_scaling"] = {{"type", type}, {"factor", 8.0}};
    expect_refused(config, std::string("rope_scaling.type' is '") + type);
    config = tiny_llama();
    config["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", type}};
    expect_refused(config, std::string("rope_parameters.rope_type' is '") + type);
  }
}

TEST(Config, RefusesMalformedRopeScaling) {
  json config = tiny_llama();
  config["rope_scaling"] = {{"factor", 8.0}};
  expect_refused(config, "'rope_scaling' is set without a rope_type");
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    SCOPED_TRACE(key);
    config = llama31_8b_instruct();
    config["rope_scaling"].erase(key);
    expect_refused(config, std::string("missing required key 'rope_scaling.") + key);
    config["rope_scaling"][key] = "8";
    expect_refused(config, std::string("rope_scaling.") + key);
    config["rope_scaling"][key] = 0;
    expect_refused(config, std::string("rope_scaling.") + key + "' must be positive");
  }
  config = llama31_8b_instruct();
  config["rope_scaling"]["original_max_position_embeddings"] = 8192.5;
  expect_refused(config, "rope_scaling.original_max_position_embeddings' must be an integer");
  config = llama31_8b_instruct();
  config["rope_scaling"]["high_freq_factor"] = 1.0;  // smoothing would divide by zero
  expect_refused(config, "rope_scaling.high_freq_factor' (1) must be greater than low_freq_factor (1)");
  config = llama31_8b_instruct();
  config["rope_scaling"]["type"] = "linear";
  expect_refused(config, "keys 'rope_scaling.rope_type' (\"llama3\") and 'rope_scaling.type' (\"linear\") disagree");
  config = tiny_llama();
  config["rope_scaling"] = {{"rope_type", "linear"}};
  expect_refused(config, "missing required key 'rope_scaling.factor' of RoPE type linear");
  config = llama31_8b_instruct();
  config["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  expect_refused(config, "keys 'rope_scaling' and 'rope_parameters' describe different RoPE scalings");
  config = tiny_llama();
  config["rope_parameters"] = "llama3";
  expect_refused(config, "rope_parameters' must be an object");
}

TEST(Config, PretrainingTpIsIgnoredAndAttentionDropoutRefused) {
  json config = llama31_8b_instruct();
  config["pretraining_tp"] = 2;  // the same products in slices: nothing cst computes changes
  EXPECT_EQ(parse_model_config(config, kWhere).hidden_size, 4096);
  for (json bad : {json("1"), json(0), json(1.5)}) {
    config["pretraining_tp"] = bad;
    expect_refused(config, "pretraining_tp");
  }
  config = llama31_8b_instruct();
  config["attention_dropout"] = 0.1;
  expect_refused(config, "'attention_dropout' is 0.1; cst implements attention without dropout");
  config["attention_dropout"] = "0";
  expect_refused(config, "attention_dropout");
  config["attention_dropout"] = 0;
  EXPECT_NO_THROW(parse_model_config(config, kWhere));
}

TEST(Config, RefusesBiases) {
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    json config = tiny_llama();
    config[key] = true;
    expect_refused(config, key);
  }
}

TEST(Config, RefusesActivationsOtherThanSilu) {
  json config = tiny_mistral();
  config["hidden_act"] = "gelu";
  expect_refused(config, "hidden_act");
}

TEST(Config, RefusesHeadsNotDivisibleByKeyValueHeads) {
  json config = tiny_mistral();
  config["num_key_value_heads"] = 3;
  expect_refused(config, "num_key_value_heads");
}

TEST(Config, RefusesMissingRequiredKeys) {
  for (const char* key :
       {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "rms_norm_eps", "max_position_embeddings"}) {
    SCOPED_TRACE(key);
    json config = tiny_mistral();
    config.erase(key);
    expect_refused(config, key);
  }
}

TEST(Config, RefusesWrongJsonTypes) {
  std::vector<std::pair<const char*, json>> cases = {
      {"hidden_size", "64"},      {"vocab_size", 100.5},
      {"num_hidden_layers", -2},  {"rms_norm_eps", "1e-5"},
      {"rope_theta", true},       {"tie_word_embeddings", 0},
      {"sliding_window", 4096.5}, {"eos_token_id", json::array({"</s>"})},
      {"bos_token_id", "1"},      {"architectures", "MistralForCausalLM"},
      {"torch_dtype", 16},        {"num_key_value_heads", 0},
      {"rope_scaling", "linear"}, {"vocab_size", 1e12},
  };
  for (const auto& [key, value] : cases) {
    SCOPED_TRACE(std::string(key) + " = " + value.dump());
    json config = tiny_mistral();
    config[key] = value;
    expect_refused(config, key);
  }
  try {
    parse_model_config(json::array(), kWhere);
    ADD_FAILURE() << "a JSON list was accepted as config.json";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(kWhere), std::string::npos);
  }
}

TEST(Config, LoadRefusesMissingOrInvalidFiles) {
  EXPECT_THROW(load_model_config(kConfigFixtures + "no_such_config.json"), Error);
  std::string path = testing::TempDir() + "/cst_invalid_config.json";
  std::ofstream(path) << "{\"model_type\": \"mistral\",";
  try {
    load_model_config(path);
    ADD_FAILURE() << "truncated JSON accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }
}

TEST(Config, UneditedConfigIsWrittenBackUnchanged) {
  for (const char* name : {"mistral_7b_v0.1", "solar_10.7b", "llama3_8b_instruct"}) {
    ModelConfig config = load_model_config(kConfigFixtures + name + ".json");
    EXPECT_EQ(model_config_to_json(config), config.original) << name;
  }
  for (const json& llama3 : {llama31_8b_instruct(), llama32_1b_instruct()})
    EXPECT_EQ(model_config_to_json(parse_model_config(llama3, kWhere)), llama3);
  json v5 = tiny_mistral();
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  EXPECT_EQ(model_config_to_json(parse_model_config(v5, kWhere)), v5);
}

TEST(Config, EditsAreWrittenIntoTheOriginal) {
  ModelConfig config = parse_model_config(tiny_mistral(), kWhere);
  config.vocab_size = 102;
  config.sliding_window = 0;
  json written = model_config_to_json(config);
  json expected = tiny_mistral();
  expected["vocab_size"] = 102;
  expected["sliding_window"] = nullptr;
  EXPECT_EQ(written, expected);
}

TEST(Config, EditedRopeScalingIsWrittenAsTransformersReadsIt) {
  ModelConfig config = parse_model_config(tiny_llama(), kWhere);
  config.rope_scaling = parse_model_config(llama31_8b_instruct(), kWhere).rope_scaling;
  json written = model_config_to_json(config);
  EXPECT_EQ(written["rope_scaling"], llama31_8b_instruct()["rope_scaling"]);
  EXPECT_EQ(parse_model_config(written, kWhere).rope_scaling, config.rope_scaling);

  json v5 = tiny_llama();
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "default"}};
  ModelConfig v5_config = parse_model_config(v5, kWhere);
  v5_config.rope_scaling.type = RopeScalingType::linear;
  v5_config.rope_scaling.factor = 2.0;
  json v5_written = model_config_to_json(v5_config);
  EXPECT_EQ(v5_written["rope_parameters"], (json{{"rope_theta", 500000.0}, {"rope_type", "linear"}, {"factor", 2.0}}));
  EXPECT_FALSE(v5_written.contains("rope_scaling"));
}

TEST(Config, ConfigBuiltInCodeRoundTrips) {
  ModelConfig config;
  config.architecture = "LlamaForCausalLM";
  config.vocab_size = 50;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_layers = 1;
  config.num_heads = 4;
  config.num_kv_heads = 1;
  config.head_dim = 8;
  config.rms_norm_eps = 1e-6f;
  config.rope_theta = 500000.0f;
  config.max_position_embeddings = 64;
  config.eos_token_id = 3;
  config.eos_token_ids = {3, 4};
  config.rope_scaling = {RopeScalingType::llama3, 8.0, 1.0, 4.0, 32};
  json written = model_config_to_json(config);
  EXPECT_EQ(written["rms_norm_eps"].dump(), "1e-06");  // the float's shortest decimal
  ModelConfig parsed = parse_model_config(written, kWhere);
  EXPECT_EQ(parsed.architecture, config.architecture);
  EXPECT_EQ(parsed.num_kv_heads, 1);
  EXPECT_EQ(parsed.head_dim, 8);
  EXPECT_EQ(parsed.rms_norm_eps, 1e-6f);
  EXPECT_EQ(parsed.rope_theta, 500000.0f);
  EXPECT_EQ(parsed.bos_token_id, -1);
  EXPECT_EQ(parsed.eos_token_ids, config.eos_token_ids);
  EXPECT_EQ(parsed.rope_scaling, config.rope_scaling);
}

}  // namespace
}  // namespace cst
