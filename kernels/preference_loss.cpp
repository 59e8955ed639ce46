// The DPO family of preference losses, per pair, in double on the host.
#include "kernels/preference_loss.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"

namespace cst {

namespace {

// Numerically stable forms: neither overflows for large |x|.
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}

double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::fabs(x))); }

struct LossAndSlope {
  double loss = 0, dloss_dz = 0;
};

// z is the policy-minus-reference margin of the pair; see the header for each formula.
LossAndSlope loss_of_margin(double z, const PreferenceLossConfig& config) {
  double beta = config.beta, eps = config.label_smoothing, bz = beta * z;
  switch (config.type) {
    case LossType::sigmoid:
      return {-(1 - eps) * log_sigmoid(bz) - eps * log_sigmoid(-bz),
              -beta * ((1 - eps) * sigmoid(-bz) - eps * sigmoid(bz))};
    case LossType::robust:
      return {(-(1 - eps) * log_sigmoid(bz) + eps * log_sigmoid(-bz)) / (1 - 2 * eps),
              -beta * ((1 - eps) * sigmoid(-bz) + eps * sigmoid(bz)) / (1 - 2 * eps)};
    case LossType::hinge:
      return {std::max(0.0, 1 - bz), bz < 1 ? -beta : 0.0};
    case LossType::ipo: {
      double gap = z - 1 / (2 * beta);
      return {gap * gap, 2 * gap};
    }
  }
  fail("preference_loss: unknown loss type");
}

void check_config(const PreferenceLossConfig& config) {
  if (!(config.beta > 0) || !std::isfinite(config.beta))
    fail("preference loss: beta must be a positive number, got ", config.beta);
  float eps = config.label_smoothing;
  if (!(eps >= 0 && eps <= 0.5f))
    fail("preference loss: label_smoothing must be in [0, 0.5], got ", eps);
  if (config.type == LossType::robust && eps == 0.5f)
    fail("preference loss: the robust loss divides by 1 - 2 label_smoothing; 0.5 is not allowed");
}

void check_finite(double value, const char* what) {
  if (!std::isfinite(value))
    fail("preference loss: ", what, " log-prob is not finite (", value, ")");
}

}  // namespace

LossType parse_loss_type(const std::string& name) {
  for (LossType type : {LossType::sigmoid, LossType::robust, LossType::hinge, LossType::ipo})
    if (name == loss_type_name(type)) return type;
  fail("unknown loss_type '", name, "': expected one of sigmoid, robust, hinge, ipo");
}

const char* loss_type_name(LossType type) {
  switch (type) {
    case LossType::sigmoid:
      return "sigmoid";
    case LossType::robust:
      return "robust";
    case LossType::hinge:
      return "hinge";
    case LossType::ipo:
      return "ipo";
  }
  return "?";
}

PairLoss preference_loss(const PairLogps& logps, const PreferenceLossConfig& config) {
  check_config(config);
  check_finite(logps.policy_chosen, "policy chosen");
  check_finite(logps.policy_rejected, "policy rejected");
  check_finite(logps.reference_chosen, "reference chosen");
  check_finite(logps.reference_rejected, "reference rejected");
  double z = (logps.policy_chosen - logps.policy_rejected) -
             (logps.reference_chosen - logps.reference_rejected);
  LossAndSlope value = loss_of_margin(z, config);
  PairLoss result;
  result.loss = value.loss;
  result.dpolicy_chosen = value.dloss_dz;
  result.dpolicy_rejected = -value.dloss_dz;
  result.reward_chosen = config.beta * (logps.policy_chosen - logps.reference_chosen);
  result.reward_rejected = config.beta * (logps.policy_rejected - logps.reference_rejected);
  return result;
}

}  // namespace cst
