// Greedy generation with the KV cache against transformers' generate() (golden data from
// tools/python/make_generate_fixtures.py), with and without the PEFT adapter. Token ids must be
// identical: greedy decoding is exact as long as no two top logits are within rounding of each
// other, which the fixture's random models do not produce.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "model/generation.h"
#include "model/lora.h"
#include "model/model_file.h"
#include "model/weights.h"

namespace cst {
namespace {

class GenerationGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GenerationGolden, GreedyMatchesTransformersGenerate) {
  const std::string root = CST_SOURCE_DIR;
  const std::string model_dir = root + "/tests/fixtures/model/" + GetParam();
  std::ifstream in(root + "/tests/fixtures/generate/" + GetParam() + ".json");
  ASSERT_TRUE(in);
  const nlohmann::json golden = nlohmann::json::parse(in);

  ModelFile model(model_dir + "/hf");
  ModelWeights weights(model, Device::cpu, DType::f32);
  LoraAdapter lora(model.config(), LoraAdapter::read_peft_config(model_dir + "/adapter"), Device::cpu);
  lora.load_peft_weights(model_dir + "/adapter");
  Transformer transformer(model.config(), weights, &lora);

  GenerationOptions options;
  options.max_new_tokens = golden["max_new_tokens"].get<int>();
  options.stop_tokens = {model.config().eos_token_id};  // generate() stops at the config's EOS too
  for (size_t i = 0; i < golden["prompts"].size(); ++i) {
    const auto prompt = golden["prompts"][i].get<std::vector<int32_t>>();
    for (bool adapters : {false, true}) {
      options.adapters_enabled = adapters;
      const auto expected = golden[adapters ? "adapter" : "base"][i].get<std::vector<int32_t>>();
      EXPECT_EQ(generate(transformer, prompt, options), expected)
          << "prompt " << i << (adapters ? " with" : " without") << " the adapter";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerationGolden, ::testing::Values("mistral_gqa_window", "llama_tied"));

TEST(Sampling, GreedyTopKTopPAndDeterminism) {
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -5.0f};
  GenerationOptions greedy;
  EXPECT_EQ(sample_token(logits, greedy, 0.7), 1);
  GenerationOptions top1;
  top1.temperature = 1.0f;
  top1.top_k = 1;
  for (double draw : {0.0, 0.5, 0.999}) EXPECT_EQ(sample_token(logits, top1, draw), 1);
  GenerationOptions nucleus;  // p(1) ~ 0.47, p(3) ~ 0.43: top_p 0.5 keeps exactly these two
  nucleus.temperature = 1.0f;
  nucleus.top_p = 0.5f;
  EXPECT_EQ(sample_token(logits, nucleus, 0.0), 1);
  EXPECT_EQ(sample_token(logits, nucleus, 0.99), 3);
  GenerationOptions full;
  full.temperature = 1.0f;
  EXPECT_EQ(sample_token(logits, full, 0.9999), 4) << "the last draw reaches the least likely token";
}

}  // namespace
}  // namespace cst
