// One DPO step against trl 0.9.6's DPOTrainer (golden data from
// tools/python/make_trl_step_fixtures.py): loss, trl's rewards/logps metrics and the LoRA gradients
// for every loss type trl 0.9.6 offers, on the tiny Mistral fixture with a non-zero adapter.
//
// Tolerances: everything is float32 on both sides. Sequence log-probs are sums of ~10 token
// log-probs of magnitude ~5, each within ~1e-6 of torch's, so sums agree to ~1e-5: 5e-5 absolute.
// Rewards are beta times differences of such sums: 1e-5 absolute. The loss is a smooth function of
// the rewards (ipo: of the mean log-probs, squared, ~25; sppo_hard: two squares of log ratios,
// ~50): 1e-4 relative. aot and aot_pair sort values that lie 0.1 or more apart here (measured), far
// more than the 5e-5 they can differ by, so both sides pair the same values (aot_pair pairs values
// of different pairs). Gradients: relative Frobenius error per tensor <= 1e-4, as in the model
// golden test.
// trl's logits/chosen metric averages over every position of the padded batch (prompt and padding
// included), which depends on padding; cst averages over completion tokens (REFERENCE.md section 3),
// so that metric is not compared.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/lora.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tests/golden_support.h"
#include "train/objective.h"
#include "train/run_log.h"

namespace cst {
namespace {
using namespace testing_support;

class TrlStep : public ::testing::TestWithParam<std::string> {};

TEST_P(TrlStep, MatchesDpoTrainer) {
  const std::string root = CST_SOURCE_DIR;
  const std::string model_dir = root + "/tests/fixtures/model/mistral_gqa_window";
  const std::string fixture = root + "/tests/fixtures/trl_step/" + GetParam();
  std::ifstream json_file(fixture + ".json");
  ASSERT_TRUE(json_file) << fixture << ".json";
  const nlohmann::json expected = nlohmann::json::parse(json_file);
  SafetensorsFile golden(fixture + ".safetensors");

  ModelFile model(model_dir + "/hf");
  ModelWeights weights(model, Device::cpu, DType::f32);
  LoraAdapter lora(model.config(), LoraAdapter::read_peft_config(model_dir + "/adapter"), Device::cpu);
  lora.load_peft_weights(model_dir + "/adapter");
  Transformer transformer(model.config(), weights, &lora);

  // The packed batch: position t scores token t+1 when that token is part of the answer.
  PackedBatch batch = golden_batch(golden, "completion_mask");
  const std::vector<int32_t>& labels = batch.labels;
  const std::vector<int32_t>& cu_seqlens = batch.cu_seqlens;
  TokenSpans spans = batch.spans();

  ForwardOptions reference_pass;
  reference_pass.adapters_enabled = false;
  TokenLogps reference = transformer.forward(spans, reference_pass);
  ForwardOptions policy_pass;
  policy_pass.save_for_backward = true;
  TokenLogps policy = transformer.forward(spans, policy_pass);

  ObjectiveConfig config = objective_config_from_names(
      GetParam(), expected["beta"].get<double>(), expected.value("label_smoothing", 0.0), 0.0, false);
  RewardRunningMean reward_mean;  // bco_pair: trl's starts afresh, as here
  ObjectiveResult result = compute_objective(
      config, sum_per_sequence(policy.logps, policy.logit_sums, labels, cu_seqlens),
      sum_per_sequence(reference.logps, reference.logit_sums, labels, cu_seqlens).logps, labels,
      cu_seqlens, model.config().vocab_size, 1.0, &reward_mean);
  lora.zero_grad();
  transformer.backward(result.dlogps);

  const double trl_loss = expected["loss"].get<double>();
  EXPECT_NEAR(result.loss, trl_loss, 1e-4 * std::abs(trl_loss));
  Metrics metrics = result.metrics.averages("");
  for (const char* name : {"rewards/chosen", "rewards/rejected", "rewards/margins"})
    EXPECT_NEAR(metrics[name], expected[name].get<double>(), 1e-5) << name;
  // trl reports the fraction in float32 (2/3 = 0.6666667).
  EXPECT_NEAR(metrics["rewards/accuracies"], expected["rewards/accuracies"].get<double>(), 1e-6);
  for (const char* name : {"logps/chosen", "logps/rejected"})
    EXPECT_NEAR(metrics[name], expected[name].get<double>(), 5e-5) << name;
  double worst = 0;
  for (const LoraAdapter::Parameter& parameter : lora.parameters()) {
    const double error = relative_error(to_host(parameter.grad), read_vector<float>(golden, "grad." + parameter.name));
    EXPECT_LE(error, 1e-4) << parameter.name;
    worst = std::max(worst, error);
  }
  std::printf("%s: loss %.8f vs trl %.8f, worst LoRA gradient relative error %.2e\n", GetParam().c_str(),
              result.loss, trl_loss, worst);
}

INSTANTIATE_TEST_SUITE_P(LossTypes, TrlStep,
                         ::testing::Values("sigmoid", "ipo", "hinge", "robust", "exo_pair", "sppo_hard", "nca_pair",
                                           "bco_pair", "aot", "aot_pair"));

}  // namespace
}  // namespace cst
