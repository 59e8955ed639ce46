// The CPU reference model against transformers + PEFT (golden data from
// tools/python/make_model_fixtures.py): logits, per-token log-probs and LoRA gradients; and RoPE's
// inverse frequencies against transformers' for scaled RoPE (Llama 3.1 / 3.2).
//
// Tolerances: the fixtures are float32 computations of the same math in a different order (BLAS
// blocking, softmax order), so values of order 1-10 agree to a few 1e-6; 1e-4 absolute for logits
// and log-probs leaves room for that while catching any real error (a wrong mask, scale or rotation
// moves values by 1e-2 or more). Gradients are compared per tensor by relative Frobenius error
// ||cst - hf|| / ||hf|| <= 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/rope.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tests/golden_support.h"

namespace cst {
namespace {
using namespace testing_support;

std::string fixture_dir(const std::string& name) {
  return std::string(CST_SOURCE_DIR) + "/tests/fixtures/model/" + name;
}

class TransformerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformerGolden, MatchesTransformersAndPeft) {
  const std::string dir = fixture_dir(GetParam());
  ModelFile model(dir + "/hf");
  ModelWeights weights(model, Device::cpu, DType::f32);
  LoraConfig lora_config = LoraAdapter::read_peft_config(dir + "/adapter");
  LoraAdapter lora(model.config(), lora_config, Device::cpu);
  lora.load_peft_weights(dir + "/adapter");
  Transformer transformer(model.config(), weights, &lora);

  SafetensorsFile golden(dir + "/golden.safetensors");
  PackedBatch batch = golden_batch(golden);

  const double logits_diff = max_abs_diff(transformer.logits(batch.spans(), true), read_vector<float>(golden, "logits"));
  const double base_diff = max_abs_diff(transformer.logits(batch.spans(), false), read_vector<float>(golden, "base_logits"));
  EXPECT_LE(logits_diff, 1e-4);
  EXPECT_LE(base_diff, 1e-4) << "adapters disabled must give the base model";
  std::printf("%s: logits max|diff| %.2e, base logits %.2e\n", GetParam().c_str(), logits_diff, base_diff);

  ForwardOptions options;
  options.save_for_backward = true;
  TokenLogps result = transformer.forward(batch.spans(), options);
  const double logps_diff = max_abs_diff(result.logps, read_vector<float>(golden, "logps"));
  EXPECT_LE(logps_diff, 1e-4);
  std::printf("%s: log-probs max|diff| %.2e\n", GetParam().c_str(), logps_diff);

  // loss = sum(logps * mask): d loss / d logp = mask.
  std::vector<int32_t> mask = read_vector<int32_t>(golden, "loss_mask");
  std::vector<float> dlogps(mask.begin(), mask.end());
  lora.zero_grad();
  transformer.backward(dlogps);
  int compared = 0;
  double worst_gradient_error = 0;
  for (const LoraAdapter::Parameter& parameter : lora.parameters()) {
    std::vector<float> expected = read_vector<float>(golden, "grad." + parameter.name);
    const double error = relative_error(to_host(parameter.grad), expected);
    EXPECT_LE(error, 1e-4) << parameter.name;
    worst_gradient_error = std::max(worst_gradient_error, error);
    ++compared;
  }
  EXPECT_EQ(compared, 2 * int(lora_config.targets.size()) * model.config().num_layers);
  std::printf("%s: LoRA gradients, worst relative error %.2e over %d tensors\n", GetParam().c_str(),
              worst_gradient_error, compared);
}

TEST_P(TransformerGolden, FreshAdapterLeavesTheModelUnchanged) {
  const std::string dir = fixture_dir(GetParam());
  ModelFile model(dir + "/hf");
  ModelWeights weights(model, Device::cpu, DType::f32);
  LoraAdapter lora(model.config(), LoraConfig{}, Device::cpu);
  lora.initialize(7);  // A random, B = 0
  Transformer transformer(model.config(), weights, &lora);
  SafetensorsFile golden(dir + "/golden.safetensors");
  PackedBatch batch = golden_batch(golden);
  EXPECT_LE(max_abs_diff(transformer.logits(batch.spans(), true), read_vector<float>(golden, "base_logits")), 1e-4);
}

// Activation checkpointing recomputes exactly the same arithmetic: identical gradients, bit for bit.
TEST_P(TransformerGolden, RecomputedActivationsGiveIdenticalGradients) {
  const std::string dir = fixture_dir(GetParam());
  ModelFile model(dir + "/hf");
  ModelWeights weights(model, Device::cpu, DType::f32);
  LoraAdapter lora(model.config(), LoraAdapter::read_peft_config(dir + "/adapter"), Device::cpu);
  lora.load_peft_weights(dir + "/adapter");
  Transformer transformer(model.config(), weights, &lora);
  SafetensorsFile golden(dir + "/golden.safetensors");
  PackedBatch batch = golden_batch(golden);
  std::vector<std::vector<float>> gradients[2];
  for (bool recompute : {false, true}) {
    ForwardOptions options;
    options.save_for_backward = true;
    options.recompute_activations = recompute;
    TokenLogps logps = transformer.forward(batch.spans(), options);
    lora.zero_grad();
    transformer.backward(std::vector<float>(logps.logps.size(), 1.0f));
    for (const LoraAdapter::Parameter& parameter : lora.parameters()) gradients[recompute].push_back(to_host(parameter.grad));
  }
  EXPECT_EQ(gradients[0], gradients[1]);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransformerGolden,
                         ::testing::Values("mistral_gqa_window", "llama_tied", "mistral_lora_subset",
                                           "llama3_rope_scaled"));

// The f32 inverse frequencies must be transformers' bit for bit: one ulp off moves the angle at
// position 100000 by ~1e-3 rad.
void expect_transformers_frequencies(const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(actual[i], expected[i]) << "pair " << i;
}

// The golden Llama 3.1-style model: config.json as transformers 4.57.6 wrote it, read into the
// llama3 scaling, and the frequencies its rotary embedding used.
TEST(RopeScalingGolden, Llama3ModelFrequenciesAreTransformers) {
  const std::string dir = fixture_dir("llama3_rope_scaled");
  ModelConfig config = load_model_config(dir + "/hf/config.json");
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.eos_token_ids, (std::vector<int>{2, 3, 4}));
  OwnedTensor frequencies =
      rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling, Device::cpu);
  expect_transformers_frequencies(to_host(frequencies),
                                  read_vector<float>(SafetensorsFile(dir + "/golden.safetensors"), "rope_inv_freq"));
}

// Published RoPE settings of Llama 3.1 8B and 3.2 1B / 3B (and linear scaling), through the same
// config reader a model's config.json goes through.
TEST(RopeScalingGolden, PublishedSettingsGiveTransformersFrequencies) {
  std::ifstream file(fixture_dir("rope_inverse_frequencies.json"));
  ASSERT_TRUE(file) << "missing fixture; run tools/python/make_model_fixtures.py --llama3";
  const nlohmann::json fixture = nlohmann::json::parse(file);
  ASSERT_GE(fixture["cases"].size(), 4u);
  for (const nlohmann::json& test_case : fixture["cases"]) {
    SCOPED_TRACE(test_case["name"].get<std::string>());
    const int head_dim = test_case["head_dim"];
    nlohmann::json config_json = {
        {"model_type", "llama"}, {"vocab_size", 16}, {"hidden_size", head_dim * 8},
        {"intermediate_size", 16}, {"num_hidden_layers", 1}, {"num_attention_heads", 8},
        {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-5},
        {"rope_theta", test_case["rope_theta"]}, {"rope_scaling", test_case["rope_scaling"]}};
    ModelConfig config = parse_model_config(config_json, "rope_inverse_frequencies.json");
    EXPECT_NE(config.rope_scaling.type, RopeScalingType::none);
    OwnedTensor frequencies =
        rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling, Device::cpu);
    expect_transformers_frequencies(to_host(frequencies), test_case["inverse_frequencies"].get<std::vector<float>>());
  }
}

}  // namespace
}  // namespace cst
