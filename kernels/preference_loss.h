// The DPO family of preference losses (trl's names), per pair, with the gradient with respect to
// the policy's sequence log-probs.
//
// For pair i: z = (pi_c - pi_r) - (ref_c - ref_r), where pi/ref are sequence log-probs (sums over
// completion tokens; ipo uses per-token means, computed by the caller), beta > 0,
// eps = label_smoothing, s = sigmoid, logsig = log s:
//   sigmoid: L = -(1-eps) logsig(beta z) - eps logsig(-beta z)         (eps > 0: conservative DPO)
//            dL/dz = -beta [(1-eps) s(-beta z) - eps s(beta z)]
//   robust:  L = [-(1-eps) logsig(beta z) + eps logsig(-beta z)] / (1 - 2 eps)
//            dL/dz = -beta [(1-eps) s(-beta z) + eps s(beta z)] / (1 - 2 eps)
//   hinge:   L = relu(1 - beta z),           dL/dz = -beta  where beta z < 1, else 0
//   ipo:     L = (z - 1/(2 beta))^2,         dL/dz = 2 (z - 1/(2 beta))
// dL/dpi_c = dL/dz, dL/dpi_r = -dL/dz. The reference log-probs carry no gradient.
// Rewards (trl metrics): chosen = beta (pi_c - ref_c), rejected = beta (pi_r - ref_r).
#pragma once
#include <string>
#include <vector>

namespace cst {

enum class LossType { sigmoid, robust, hinge, ipo };

LossType parse_loss_type(const std::string& name);  // error lists the valid names
const char* loss_type_name(LossType type);

struct PreferenceLossConfig {
  LossType type = LossType::sigmoid;
  float beta = 0.1f;
  float label_smoothing = 0.0f;
};

struct PairLogps {
  double policy_chosen = 0, policy_rejected = 0;
  double reference_chosen = 0, reference_rejected = 0;
};

struct PairLoss {
  double loss = 0;
  double dpolicy_chosen = 0, dpolicy_rejected = 0;  // dL/d(policy log-prob), before batch mean
  double reward_chosen = 0, reward_rejected = 0;
};

// The loss is tiny (one value per pair) and runs on the host for both backends.
PairLoss preference_loss(const PairLogps& logps, const PreferenceLossConfig& config);

}  // namespace cst
