// Tests of the DPO-family losses: every loss type against trl 0.9.6's dpo_loss written out plainly
// in double, and the gradients against central differences of the sum of the terms.
//
// The finite differences keep away from the losses' non-smooth points, where a derivative jumps:
// hinge's kink at beta z = 1, and for aot and aot_pair a tie between two of the values they sort
// (the slope moves to the other pair). A trial whose inputs lie within 1e-3 of one is skipped; the
// difference step moves a value by 1e-6, so no difference crosses one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "kernels/preference_loss.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

double plain_sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

// trl's sigmoid loss of a margin x (also the term of aot and aot_pair).
double plain_sigmoid_loss(double x, double beta, double eps) {
  return -(1 - eps) * std::log(plain_sigmoid(beta * x)) - eps * std::log(plain_sigmoid(-beta * x));
}

std::vector<double> sorted(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values;
}

// trl 0.9.6 DPOTrainer.dpo_loss's `losses`, written out plainly (no stable forms: the inputs tested
// are moderate). delta: bco_pair's running mean, as the kernel used it.
std::vector<double> reference_terms(const std::vector<PairLogps>& pairs, const PreferenceLossConfig& config,
                                    double delta) {
  const double beta = config.beta, eps = config.label_smoothing;
  std::vector<double> a, b, policy_margin, reference_margin, terms;
  for (const PairLogps& p : pairs) {
    a.push_back(p.policy_chosen - p.reference_chosen);
    b.push_back(p.policy_rejected - p.reference_rejected);
    policy_margin.push_back(p.policy_chosen - p.policy_rejected);
    reference_margin.push_back(p.reference_chosen - p.reference_rejected);
  }
  if (config.type == LossType::aot || config.type == LossType::aot_pair) {
    const bool aot = config.type == LossType::aot;
    const std::vector<double> x = sorted(aot ? policy_margin : a), y = sorted(aot ? reference_margin : b);
    for (size_t k = 0; k < x.size(); ++k) terms.push_back(plain_sigmoid_loss(x[k] - y[k], beta, eps));
    return terms;
  }
  for (size_t i = 0; i < pairs.size(); ++i) {
    const double z = policy_margin[i] - reference_margin[i];
    switch (config.type) {
      case LossType::sigmoid:
        terms.push_back(plain_sigmoid_loss(z, beta, eps));
        break;
      case LossType::robust:
        terms.push_back((-(1 - eps) * std::log(plain_sigmoid(beta * z)) + eps * std::log(plain_sigmoid(-beta * z))) /
                        (1 - 2 * eps));
        break;
      case LossType::hinge:
        terms.push_back(std::max(0.0, 1 - beta * z));
        break;
      case LossType::ipo:
        terms.push_back(std::pow(z - 1 / (2 * beta), 2));
        break;
      case LossType::exo_pair: {
        const double smoothing = eps == 0 ? 1e-3 : eps, p = plain_sigmoid(beta * z);
        terms.push_back(p * (std::log(p) - std::log(1 - smoothing)) +
                        (1 - p) * (std::log(1 - p) - std::log(smoothing)));
        break;
      }
      case LossType::sppo_hard:
        terms.push_back(std::pow(a[i] - 0.5 / beta, 2) + std::pow(b[i] + 0.5 / beta, 2));
        break;
      case LossType::nca_pair:
        terms.push_back(-std::log(plain_sigmoid(beta * a[i])) - 0.5 * std::log(plain_sigmoid(-beta * a[i])) -
                        0.5 * std::log(plain_sigmoid(-beta * b[i])));
        break;
      case LossType::bco_pair:
        terms.push_back(-std::log(plain_sigmoid(beta * a[i] - delta)) -
                        std::log(plain_sigmoid(-(beta * b[i] - delta))));
        break;
      default:
        ADD_FAILURE() << "no reference for " << loss_type_name(config.type);
    }
  }
  return terms;
}

// The smallest distance between two of the values (infinity for fewer than two).
double smallest_gap(std::vector<double> values) {
  values = sorted(values);
  double gap = INFINITY;
  for (size_t i = 1; i < values.size(); ++i) gap = std::min(gap, values[i] - values[i - 1]);
  return gap;
}

// Whether the inputs lie within 1e-3 of a point where the loss is not differentiable.
bool near_non_smooth_point(const std::vector<PairLogps>& pairs, const PreferenceLossConfig& config) {
  std::vector<double> a, b, policy_margin;
  for (const PairLogps& p : pairs) {
    a.push_back(p.policy_chosen - p.reference_chosen);
    b.push_back(p.policy_rejected - p.reference_rejected);
    policy_margin.push_back(p.policy_chosen - p.policy_rejected);
  }
  switch (config.type) {
    case LossType::hinge:
      for (size_t i = 0; i < pairs.size(); ++i)
        if (std::fabs(config.beta * (a[i] - b[i]) - 1) < 1e-3) return true;
      return false;
    case LossType::aot:
      return smallest_gap(policy_margin) < 1e-3;
    case LossType::aot_pair:
      return smallest_gap(a) < 1e-3 || smallest_gap(b) < 1e-3;
    default:
      return false;
  }
}

// Pairs whose log ratios (policy minus reference) lie in [-4, 4], so that beta times them spans the
// curved part of the sigmoid losses for the betas tested.
std::vector<PairLogps> random_pairs(test::Rng& rng, size_t count) {
  std::vector<PairLogps> pairs(count);
  for (PairLogps& p : pairs) {
    p.policy_chosen = rng.uniform(-60, -5);
    p.policy_rejected = rng.uniform(-60, -5);
    p.reference_chosen = p.policy_chosen - rng.uniform(-4, 4);
    p.reference_rejected = p.policy_rejected - rng.uniform(-4, 4);
  }
  return pairs;
}

double sum(const std::vector<double>& values) {
  double total = 0;
  for (double value : values) total += value;
  return total;
}

TEST(OpsPreferenceLoss, EveryTypeMatchesFormulaAndFiniteDifferences) {
  test::Rng rng(300);
  for (LossType type : all_loss_types()) {
    int checked = 0;
    for (float smoothing : {0.0f, 0.1f, 0.3f}) {
      for (size_t count : {1, 2, 5}) {
        for (int trial = 0; trial < 4; ++trial) {
          const PreferenceLossConfig config{type, float(rng.uniform(0.05, 2.0)), smoothing};
          const std::vector<PairLogps> pairs = random_pairs(rng, count);
          if (near_non_smooth_point(pairs, config)) continue;
          SCOPED_TRACE(testing::Message() << loss_type_name(type) << " smoothing " << smoothing << " beta "
                                          << config.beta << " pairs " << count << " trial " << trial);
          RewardRunningMean reward_mean;  // bco_pair: some history, so that delta is not this batch's mean
          reward_mean.add(rng.uniform(-1, 1));
          reward_mean.add(rng.uniform(-1, 1));
          const PreferenceLoss result = preference_loss(pairs, config, &reward_mean);
          const double delta = reward_mean.mean;
          const std::vector<double> expected = reference_terms(pairs, config, delta);
          ASSERT_EQ(result.terms.size(), expected.size());
          // Both sides in double; the kernel's stable forms differ by rounding only.
          for (size_t k = 0; k < expected.size(); ++k)
            EXPECT_NEAR(result.terms[k], expected[k], 1e-10 * std::max(1.0, std::fabs(expected[k]))) << "term " << k;
          EXPECT_NEAR(result.mean(), sum(expected) / double(count), 1e-10 * std::max(1.0, std::fabs(sum(expected))));

          // x = (pi_c, pi_r) of every pair; the reference and delta stay fixed (no gradient in trl).
          std::vector<double> x;
          for (const PairLogps& p : pairs) x.insert(x.end(), {p.policy_chosen, p.policy_rejected});
          auto summed_loss = [&](const std::vector<double>& moved) {
            std::vector<PairLogps> shifted = pairs;
            for (size_t i = 0; i < count; ++i) {
              shifted[i].policy_chosen = moved[2 * i];
              shifted[i].policy_rejected = moved[2 * i + 1];
            }
            return sum(reference_terms(shifted, config, delta));
          };
          const std::vector<double> numeric = test::numeric_gradient(summed_loss, x);
          // Central differences of a double function with step 1e-6: error ~1e-10 relative to the
          // loss (cancellation) plus ~1e-12 (truncation); a wrong term is off by ~beta or more.
          const double tolerance = 1e-7 * std::max(1.0, std::fabs(sum(expected)));
          for (size_t i = 0; i < count; ++i) {
            EXPECT_NEAR(result.pairs[i].dpolicy_chosen, numeric[2 * i], tolerance) << "pair " << i;
            EXPECT_NEAR(result.pairs[i].dpolicy_rejected, numeric[2 * i + 1], tolerance) << "pair " << i;
            EXPECT_DOUBLE_EQ(result.pairs[i].reward_chosen,
                             config.beta * (pairs[i].policy_chosen - pairs[i].reference_chosen));
            EXPECT_DOUBLE_EQ(result.pairs[i].reward_rejected,
                             config.beta * (pairs[i].policy_rejected - pairs[i].reference_rejected));
          }
          ++checked;
        }
      }
    }
    EXPECT_GE(checked, 30) << loss_type_name(type) << ": too many trials near a non-smooth point";
  }
}

TEST(OpsPreferenceLoss, SortedLossesPairValuesByRankNotByPair) {
  // aot_pair: the chosen log ratios (1, 3) and rejected (2, 0) sort to (1, 3) and (0, 2), so the
  // terms are the sigmoid losses of 1 - 0 and 3 - 2, while pair by pair they would be -1 and 3.
  const PreferenceLossConfig config{LossType::aot_pair, 1.0f, 0.0f};
  const PreferenceLoss result = preference_loss({{1, 2, 0, 0}, {3, 0, 0, 0}}, config);
  ASSERT_EQ(result.terms.size(), 2u);
  EXPECT_NEAR(result.terms[0], -std::log(plain_sigmoid(1.0)), 1e-12);
  EXPECT_NEAR(result.terms[1], -std::log(plain_sigmoid(1.0)), 1e-12);
  // Pair 0's chosen ranks first (term 0) and its rejected ranks second (term 1).
  EXPECT_NEAR(result.pairs[0].dpolicy_chosen, -plain_sigmoid(-1.0), 1e-12);
  EXPECT_NEAR(result.pairs[0].dpolicy_rejected, plain_sigmoid(-1.0), 1e-12);
}

TEST(OpsPreferenceLoss, ExoPairTurnsZeroSmoothingIntoOneThousandth) {
  const std::vector<PairLogps> pairs = {{-10, -12, -11, -11.5}, {-30, -20, -25, -26}};
  const PreferenceLoss zero = preference_loss(pairs, {LossType::exo_pair, 0.5f, 0.0f});
  const PreferenceLoss thousandth = preference_loss(pairs, {LossType::exo_pair, 0.5f, 1e-3f});
  // 1e-3f is 1e-3 (1 + 4.7e-8), which moves log(eps) by 4.7e-8 and the loss and slope by at most
  // that; a smoothing of 2e-3 instead would move the terms by 0.2 and more.
  for (size_t k = 0; k < pairs.size(); ++k) {
    EXPECT_NEAR(zero.terms[k], thousandth.terms[k], 1e-7);
    EXPECT_NEAR(zero.pairs[k].dpolicy_chosen, thousandth.pairs[k].dpolicy_chosen, 1e-7);
  }
}

TEST(OpsPreferenceLoss, BcoPairDeltaIsTheRunningMeanOfBatchMeanRewards) {
  const PreferenceLossConfig config{LossType::bco_pair, 0.5f, 0.0f};
  RewardRunningMean reward_mean;
  // Mean rewards per call: 0.5 * mean(2, 0) = 0.5, then 0.5 * mean(-1, -2, 4, 3) = 0.5.
  preference_loss({{2, 0, 0, 0}}, config, &reward_mean);
  EXPECT_EQ(reward_mean.count, 1);
  EXPECT_FLOAT_EQ(reward_mean.mean, 0.5f);
  preference_loss({{-1, -2, 0, 0}, {4, 3, 0, 0}}, config, &reward_mean);
  EXPECT_EQ(reward_mean.count, 2);
  EXPECT_FLOAT_EQ(reward_mean.mean, 0.5f);
  // A third batch of mean reward 2: the mean of the three samples.
  preference_loss({{4, 4, 0, 0}}, config, &reward_mean);
  EXPECT_FLOAT_EQ(reward_mean.mean, 1.0f);
  EXPECT_THROW(preference_loss({{4, 4, 0, 0}}, config), Error);  // no running mean given
}

TEST(OpsPreferenceLoss, LargeMarginsStayFinite) {
  PreferenceLossConfig config{LossType::sigmoid, 1.0f, 0.0f};
  PreferenceLoss confident = preference_loss({{0, -5000, 0, 0}}, config);
  EXPECT_NEAR(confident.terms[0], 0.0, 1e-300);
  PreferenceLoss wrong = preference_loss({{-5000, 0, 0, 0}}, config);
  EXPECT_NEAR(wrong.terms[0], 5000.0, 1e-9);
  EXPECT_NEAR(wrong.pairs[0].dpolicy_chosen, -1.0, 1e-12);
  for (LossType type : all_loss_types()) {
    RewardRunningMean reward_mean;
    PreferenceLoss far = preference_loss({{-5000, 0, 0, 0}, {0, -5000, 0, 0}}, {type, 1.0f, 0.1f}, &reward_mean);
    for (size_t k = 0; k < 2; ++k)
      EXPECT_TRUE(std::isfinite(far.terms[k]) && std::isfinite(far.pairs[k].dpolicy_chosen) &&
                  std::isfinite(far.pairs[k].dpolicy_rejected))
          << loss_type_name(type);
  }
}

TEST(OpsPreferenceLoss, NamesRoundTripAndBadValuesAreErrors) {
  for (LossType type : all_loss_types()) EXPECT_EQ(parse_loss_type(loss_type_name(type)), type);
  try {
    parse_loss_type("kto_pair");
    FAIL() << "kto_pair was accepted";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("sigmoid, robust, hinge, ipo, exo_pair, sppo_hard, nca_pair, bco_pair, aot, aot_pair"),
              std::string::npos) << message;
    EXPECT_NE(message.find("DPOTrainer removed it"), std::string::npos) << message;
  }
  std::vector<PairLogps> pairs = {{-1, -2, -1, -2}};
  EXPECT_THROW(preference_loss(pairs, {LossType::sigmoid, 0.0f, 0.0f}), Error);
  EXPECT_THROW(preference_loss(pairs, {LossType::sigmoid, 0.1f, 0.6f}), Error);
  EXPECT_THROW(preference_loss(pairs, {LossType::robust, 0.1f, 0.5f}), Error);
  EXPECT_THROW(preference_loss({{NAN, -2, -1, -2}}, {}), Error);
  EXPECT_THROW(preference_loss({}, {}), Error);
}

}  // namespace
}  // namespace cst
