// The CPU ops against the real implementations they stand in for: transformers' rotary
// embedding, torch.optim.AdamW, trl's DPO losses, and the dropout hash as specified in
// kernels/elementwise.h. Fixtures: tests/fixtures/ops/, made by tools/python/make_ops_fixtures.py.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/preference_loss.h"
#include "kernels/rope.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

using test::f32_tensor;
using test::to_vector;

nlohmann::json read_fixture(const std::string& name) {
  std::string path = std::string(CST_SOURCE_DIR) + "/tests/fixtures/ops/" + name;
  std::ifstream file(path);
  if (!file) fail("cannot open fixture ", path, " (rerun tools/python/make_ops_fixtures.py)");
  return nlohmann::json::parse(file);
}

TEST(OpsGolden, RopeAnglesAreTransformersF32CosSin) {
  nlohmann::json fixture = read_fixture("rope_transformers.json");
  ASSERT_FALSE(fixture["cases"].empty());
  for (const auto& test_case : fixture["cases"]) {
    int64_t head_dim = test_case["head_dim"], half = head_dim / 2;
    float theta = test_case["theta"];
    std::vector<int32_t> positions = test_case["positions"];
    std::vector<float> cos_expected = test_case["cos"], sin_expected = test_case["sin"];
    SCOPED_TRACE(testing::Message() << "head_dim " << head_dim << " theta " << theta);
    // Rotating the vector (1, ..., 1, 0, ..., 0) leaves cos in the first half and sin in the
    // second, exactly: x cos - 0 sin and 0 cos + x sin involve no rounding.
    int64_t tokens = int64_t(positions.size());
    std::vector<float> unit(size_t(tokens * head_dim), 0.0f);
    for (int64_t n = 0; n < tokens; ++n)
      for (int64_t i = 0; i < half; ++i) unit[size_t(n * head_dim + i)] = 1.0f;
    OwnedTensor x = f32_tensor({tokens, 1, head_dim}, unit);
    OwnedTensor position_tensor = test::i32_tensor({tokens}, positions);
    rope_forward(x, position_tensor, rope_inverse_frequencies(head_dim, theta, RopeScaling{}, Device::cpu));
    // The angle (f32 position x f32 inv_freq) must be transformers' exactly: an inv_freq one ulp
    // off moves the angle at position 32767 by ~2e-3. cos/sin themselves are torch's vectorised
    // f32 functions, which differ from correctly rounded values by up to 1 ulp (6e-8 below 1).
    for (int64_t n = 0; n < tokens; ++n)
      for (int64_t i = 0; i < half; ++i) {
        size_t expected_at = size_t(n * half + i);
        EXPECT_NEAR(x->f32()[n * head_dim + i], cos_expected[expected_at], 6e-8)
            << "position " << positions[size_t(n)] << " pair " << i;
        EXPECT_NEAR(x->f32()[n * head_dim + half + i], sin_expected[expected_at], 6e-8)
            << "position " << positions[size_t(n)] << " pair " << i;
      }
  }
}

TEST(OpsGolden, AdamWFollowsTorchStepByStep) {
  nlohmann::json fixture = read_fixture("adamw_torch.json");
  AdamWConfig config;
  config.beta1 = fixture["config"]["beta1"];
  config.beta2 = fixture["config"]["beta2"];
  config.epsilon = fixture["config"]["epsilon"];
  config.weight_decay = fixture["config"]["weight_decay"];
  std::vector<float> initial = fixture["initial"];
  ASSERT_FALSE(fixture["steps"].empty());
  int64_t count = int64_t(initial.size());
  OwnedTensor param = f32_tensor({count}, initial);
  OwnedTensor m({count}, DType::f32, Device::cpu), v({count}, DType::f32, Device::cpu);
  int64_t step = 0;
  for (const auto& record : fixture["steps"]) {
    ++step;
    std::vector<float> grad_values = record["grad"], expected = record["param"];
    OwnedTensor grad = f32_tensor({count}, grad_values);
    adamw_update(param, grad, m, v, config, float(record["learning_rate"]), step,
                 float(record["grad_scale"]));
    // Each step moves a parameter by about the learning rate (1e-3). torch rounds a little
    // differently (lerp for m, 1 - beta in double), which shifts a step by ~1e-6 of itself;
    // 1e-8 absolute is 1e-5 of a step, while a wrong bias correction or decay is off by 1e-4.
    for (int64_t i = 0; i < count; ++i)
      EXPECT_NEAR(param->f32()[i], expected[size_t(i)], 1e-8) << "step " << step << " index " << i;
  }
}

TEST(OpsGolden, PreferenceLossesMatchTrlDpoLoss) {
  nlohmann::json fixture = read_fixture("dpo_loss_trl.json");
  ASSERT_FALSE(fixture["cases"].empty());
  std::map<int, RewardRunningMean> streams;  // bco_pair: cases of one stream share the running mean
  std::set<std::string> types_seen;
  for (const auto& test_case : fixture["cases"]) {
    PreferenceLossConfig config{parse_loss_type(test_case["loss_type"]), float(test_case["beta"]),
                                float(test_case["label_smoothing"])};
    types_seen.insert(test_case["loss_type"]);
    SCOPED_TRACE(testing::Message() << test_case["loss_type"] << " beta " << config.beta
                                    << " smoothing " << config.label_smoothing);
    std::vector<PairLogps> pairs;
    for (size_t i = 0; i < test_case["loss"].size(); ++i)
      pairs.push_back({test_case["policy_chosen"][i], test_case["policy_rejected"][i],
                       test_case["reference_chosen"][i], test_case["reference_rejected"][i]});
    RewardRunningMean& reward_mean = streams[test_case.value("stream", 0)];
    PreferenceLoss result = preference_loss(pairs, config, &reward_mean);
    // trl ran in double with the exact beta; here beta and the smoothing are f32 (relative
    // error 3e-8), which moves every value by a few 1e-8 of itself at most. bco_pair's running mean
    // is f32 on both sides; the f32 beta can round a sample to the neighbouring float (6e-8 of it).
    auto close = [](double actual, double expected) {
      return std::fabs(actual - expected) <= 1e-6 * std::max(1.0, std::fabs(expected));
    };
    // The fixture's gradients are those of the sum of trl's terms, as dpolicy_* are.
    for (size_t i = 0; i < pairs.size(); ++i) {
      EXPECT_TRUE(close(result.terms[i], test_case["loss"][i])) << result.terms[i];
      EXPECT_TRUE(close(result.pairs[i].dpolicy_chosen, test_case["dpolicy_chosen"][i]))
          << result.pairs[i].dpolicy_chosen;
      EXPECT_TRUE(close(result.pairs[i].dpolicy_rejected, test_case["dpolicy_rejected"][i]))
          << result.pairs[i].dpolicy_rejected;
      EXPECT_TRUE(close(result.pairs[i].reward_chosen, test_case["reward_chosen"][i]));
      EXPECT_TRUE(close(result.pairs[i].reward_rejected, test_case["reward_rejected"][i]));
    }
    if (test_case.contains("running_mean"))
      EXPECT_TRUE(close(reward_mean.mean, test_case["running_mean"])) << reward_mean.mean;
  }
  EXPECT_EQ(types_seen.size(), all_loss_types().size()) << "the fixture covers every loss type";
}

TEST(OpsGolden, CounterUniformIsTheSpecifiedHashBitForBit) {
  nlohmann::json fixture = read_fixture("counter_uniform.json");
  ASSERT_FALSE(fixture["draws"].empty());
  for (const auto& draw : fixture["draws"]) {
    uint64_t seed = std::stoull(draw["seed"].get<std::string>());
    uint64_t stream = std::stoull(draw["stream"].get<std::string>());
    uint64_t index = std::stoull(draw["index"].get<std::string>());
    EXPECT_EQ(counter_uniform(seed, stream, index), float(draw["value"]))
        << "seed " << seed << " stream " << stream << " index " << index;
  }
}

}  // namespace
}  // namespace cst
