// Greedy generation with the KV cache against transformers' generate() (golden data from
// tools/python/make_generate_fixtures.py), with and without the PEFT adapter. Token ids must be
// identical: greedy decoding is exact as long as no two top logits are within rounding of each
// other, which the fixture's random models do not produce. The Llama 3.1-style model has a list of
// EOS ids; its prompts were chosen so that generations end at each of them. mistral_gqa_window_memorized
// pairs that model with an adapter trained to continue its prompts with fixed random tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "model/generation.h"
#include "model/lora.h"
#include "model/model_file.h"
#include "model/weights.h"
#include "tests/golden_support.h"

namespace cst {
namespace {

class GenerationGolden : public ::testing::TestWithParam<std::string> {};

struct GoldenGeneration {
  nlohmann::json golden;
  ModelFile model;
  ModelWeights weights;
  LoraAdapter lora;
  Transformer transformer;

  explicit GoldenGeneration(const std::string& name) : GoldenGeneration(testing_support::read_generation_golden(name)) {}
  explicit GoldenGeneration(const testing_support::GenerationGoldenFile& file)
      : golden(file.golden),
        model(file.model_directory),
        weights(model, Device::cpu, DType::f32),
        lora(model.config(), LoraAdapter::read_peft_config(file.adapter_directory), Device::cpu),
        transformer(model.config(), weights, &lora) {
    lora.load_peft_weights(file.adapter_directory);
  }
  std::vector<std::vector<int32_t>> prompts() const {
    std::vector<std::vector<int32_t>> result;
    for (const auto& prompt : golden["prompts"]) result.push_back(prompt.get<std::vector<int32_t>>());
    return result;
  }
  std::vector<int32_t> expected(size_t prompt, bool adapters) const {
    return golden[adapters ? "adapter" : "base"][prompt].get<std::vector<int32_t>>();
  }
  GenerationOptions greedy(bool adapters) const {
    GenerationOptions options;
    options.max_new_tokens = golden["max_new_tokens"].get<int>();
    // generate() stops at every EOS id of the config too
    options.stop_tokens.assign(model.config().eos_token_ids.begin(), model.config().eos_token_ids.end());
    options.adapters_enabled = adapters;
    return options;
  }
};

TEST_P(GenerationGolden, GreedyMatchesTransformersGenerate) {
  GoldenGeneration fixture(GetParam());
  const auto prompts = fixture.prompts();
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (bool adapters : {false, true}) {
      EXPECT_EQ(generate(fixture.transformer, prompts[i], fixture.greedy(adapters)), fixture.expected(i, adapters))
          << "prompt " << i << (adapters ? " with" : " without") << " the adapter";
    }
  }
}

// All prompts in one batch (different lengths, so the sequences stop at different steps): the
// same tokens as transformers' generate() gives each prompt alone.
TEST_P(GenerationGolden, BatchedGreedyMatchesTransformersGenerate) {
  GoldenGeneration fixture(GetParam());
  const auto prompts = fixture.prompts();
  ASSERT_GE(prompts.size(), 2u);
  for (bool adapters : {false, true}) {
    std::vector<std::vector<int32_t>> streamed(prompts.size());
    const auto generated = generate_batch(fixture.transformer, prompts, fixture.greedy(adapters),
                                          [&](size_t prompt, int32_t token) { streamed[prompt].push_back(token); });
    ASSERT_EQ(generated.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(generated[i], fixture.expected(i, adapters)) << "prompt " << i << (adapters ? " with" : " without") << " the adapter";
      EXPECT_EQ(streamed[i], generated[i]) << "prompt " << i;
    }
  }
}

// Sampling in a batch draws what generate() draws for each prompt alone.
TEST_P(GenerationGolden, BatchedSamplingMatchesOnePromptAtATime) {
  GoldenGeneration fixture(GetParam());
  const auto prompts = fixture.prompts();
  GenerationOptions options = fixture.greedy(true);
  options.temperature = 1.5f;  // flat enough that the draws pick tokens other than the argmax
  options.top_k = 20;
  options.seed = 7;
  const auto batched = generate_batch(fixture.transformer, prompts, options);
  std::set<int32_t> distinct;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(batched[i], generate(fixture.transformer, prompts[i], options)) << "prompt " << i;
    distinct.insert(batched[i].begin(), batched[i].end());
  }
  EXPECT_GT(distinct.size(), 3u) << "the draws should not all give the same few tokens";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerationGolden,
                         ::testing::Values("mistral_gqa_window", "llama_tied", "llama3_rope_scaled",
                                           "mistral_gqa_window_memorized"));

// A generation ends right after the EOS id transformers stopped at (null: it ran to max_new_tokens),
// with no EOS id before it.
void expect_stopped_as_recorded(const std::vector<int32_t>& generated, const nlohmann::json& stopped_by,
                                const std::vector<int>& eos_ids, size_t max_new_tokens, const std::string& what) {
  ASSERT_FALSE(generated.empty()) << what;
  const auto is_eos = [&](int32_t token) { return std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end(); };
  EXPECT_TRUE(std::none_of(generated.begin(), generated.end() - 1, is_eos)) << what << ": an EOS id before the end";
  if (stopped_by.is_null()) {
    EXPECT_EQ(generated.size(), max_new_tokens) << what;
    EXPECT_FALSE(is_eos(generated.back())) << what;
  } else {
    EXPECT_EQ(generated.back(), stopped_by.get<int32_t>()) << what;
    EXPECT_LT(generated.size(), max_new_tokens) << what;
  }
}

// The model's config lists EOS ids [2, 3, 4]: single and batched generation stop at each of them,
// not only at the first, and an EOS id inside a prompt (as <|eot_id|> after an earlier turn of a
// Llama 3 conversation) stops nothing.
TEST(GenerationGoldenEosList, StopsRightAfterEachEosIdOfTheList) {
  GoldenGeneration fixture("llama3_rope_scaled");
  const std::vector<int>& eos_ids = fixture.model.config().eos_token_ids;
  ASSERT_EQ(fixture.golden["eos_token_id"].get<std::vector<int>>(), eos_ids);
  const auto prompts = fixture.prompts();
  const size_t max_new_tokens = fixture.golden["max_new_tokens"].get<size_t>();
  std::set<int> stops_seen;
  bool ran_to_max_new_tokens = false;
  for (bool adapters : {false, true}) {
    const nlohmann::json& stopped_by = fixture.golden["stopped_by"][adapters ? "adapter" : "base"];
    ASSERT_EQ(stopped_by.size(), prompts.size());
    const auto batched = generate_batch(fixture.transformer, prompts, fixture.greedy(adapters));
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string what = "prompt " + std::to_string(i) + (adapters ? " with" : " without") + " the adapter";
      expect_stopped_as_recorded(generate(fixture.transformer, prompts[i], fixture.greedy(adapters)), stopped_by[i],
                                 eos_ids, max_new_tokens, what);
      expect_stopped_as_recorded(batched[i], stopped_by[i], eos_ids, max_new_tokens, what + ", batched");
      if (stopped_by[i].is_null()) ran_to_max_new_tokens = true;
      else stops_seen.insert(stopped_by[i].get<int>());
    }
  }
  EXPECT_EQ(stops_seen, std::set<int>(eos_ids.begin(), eos_ids.end())) << "the fixture should stop at every EOS id";
  EXPECT_TRUE(ran_to_max_new_tokens) << "the fixture should have a generation that runs to max_new_tokens";
}

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
