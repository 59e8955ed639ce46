// Tests of the DPO-family losses: the loss against the formulas written out directly in double,
// and the gradients against central differences of that loss.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/preference_loss.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

double reference_sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

// trl 0.9.6 DPOTrainer.dpo_loss for one pair, written out plainly (no stable forms: the margins
// tested are moderate).
double reference_loss(const PairLogps& p, const PreferenceLossConfig& config) {
  double z = (p.policy_chosen - p.policy_rejected) - (p.reference_chosen - p.reference_rejected);
  double beta = config.beta, eps = config.label_smoothing;
  switch (config.type) {
    case LossType::sigmoid:
      return -(1 - eps) * std::log(reference_sigmoid(beta * z)) -
             eps * std::log(reference_sigmoid(-beta * z));
    case LossType::robust:
      return (-(1 - eps) * std::log(reference_sigmoid(beta * z)) +
              eps * std::log(reference_sigmoid(-beta * z))) /
             (1 - 2 * eps);
    case LossType::hinge:
      return std::max(0.0, 1 - beta * z);
    case LossType::ipo:
      return std::pow(z - 1 / (2 * beta), 2);
  }
  return NAN;
}

TEST(OpsPreferenceLoss, EveryTypeAndSmoothingMatchesFormulaAndFiniteDifferences) {
  test::Rng rng(300);
  for (LossType type : {LossType::sigmoid, LossType::robust, LossType::hinge, LossType::ipo}) {
    for (float smoothing : {0.0f, 0.1f, 0.3f}) {
      for (int trial = 0; trial < 8; ++trial) {
        PreferenceLossConfig config{type, float(rng.uniform(0.05, 2.0)), smoothing};
        PairLogps logps{rng.uniform(-60, -5), rng.uniform(-60, -5), rng.uniform(-60, -5),
                        rng.uniform(-60, -5)};
        double z = (logps.policy_chosen - logps.policy_rejected) -
                   (logps.reference_chosen - logps.reference_rejected);
        if (type == LossType::hinge && std::fabs(config.beta * z - 1) < 1e-3) continue;  // kink
        SCOPED_TRACE(testing::Message() << loss_type_name(type) << " smoothing " << smoothing
                                        << " beta " << config.beta << " z " << z);
        PairLoss result = preference_loss(logps, config);
        double expected = reference_loss(logps, config);
        // Both sides in double; the kernel's stable forms differ by rounding only.
        EXPECT_NEAR(result.loss, expected, 1e-10 * std::max(1.0, std::fabs(expected)));

        const double step = 1e-5;
        auto loss_at = [&](double chosen, double rejected) {
          PairLogps moved = logps;
          moved.policy_chosen = chosen;
          moved.policy_rejected = rejected;
          return reference_loss(moved, config);
        };
        double numeric_chosen = (loss_at(logps.policy_chosen + step, logps.policy_rejected) -
                                 loss_at(logps.policy_chosen - step, logps.policy_rejected)) /
                                (2 * step);
        double numeric_rejected = (loss_at(logps.policy_chosen, logps.policy_rejected + step) -
                                   loss_at(logps.policy_chosen, logps.policy_rejected - step)) /
                                  (2 * step);
        // Central differences in double with step 1e-5: error ~1e-10 absolute.
        EXPECT_NEAR(result.dpolicy_chosen, numeric_chosen, 1e-7);
        EXPECT_NEAR(result.dpolicy_rejected, numeric_rejected, 1e-7);
        EXPECT_DOUBLE_EQ(result.reward_chosen,
                         config.beta * (logps.policy_chosen - logps.reference_chosen));
        EXPECT_DOUBLE_EQ(result.reward_rejected,
                         config.beta * (logps.policy_rejected - logps.reference_rejected));
      }
    }
  }
}

TEST(OpsPreferenceLoss, LargeMarginsStayFinite) {
  PreferenceLossConfig config{LossType::sigmoid, 1.0f, 0.0f};
  PairLoss confident = preference_loss({0, -5000, 0, 0}, config);
  EXPECT_NEAR(confident.loss, 0.0, 1e-300);
  PairLoss wrong = preference_loss({-5000, 0, 0, 0}, config);
  EXPECT_NEAR(wrong.loss, 5000.0, 1e-9);
  EXPECT_NEAR(wrong.dpolicy_chosen, -1.0, 1e-12);
}

TEST(OpsPreferenceLoss, NamesRoundTripAndBadValuesAreErrors) {
  for (LossType type : {LossType::sigmoid, LossType::robust, LossType::hinge, LossType::ipo})
    EXPECT_EQ(parse_loss_type(loss_type_name(type)), type);
  try {
    parse_loss_type("kto_pair");
    FAIL() << "an unknown loss type was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("sigmoid, robust, hinge, ipo"), std::string::npos);
  }
  PairLogps logps{-1, -2, -1, -2};
  EXPECT_THROW(preference_loss(logps, {LossType::sigmoid, 0.0f, 0.0f}), Error);
  EXPECT_THROW(preference_loss(logps, {LossType::sigmoid, 0.1f, 0.6f}), Error);
  EXPECT_THROW(preference_loss(logps, {LossType::robust, 0.1f, 0.5f}), Error);
  EXPECT_THROW(preference_loss({NAN, -2, -1, -2}, {}), Error);
}

}  // namespace
}  // namespace cst
