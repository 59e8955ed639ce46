// The DPO family of preference losses (trl 0.9.6's DPOTrainer.dpo_loss), over the pairs of one
// micro-batch, with the gradient with respect to the policy's sequence log-probs.
//
// For pair i: pi_c, pi_r = the policy's sequence log-probs (sums over completion tokens; ipo uses
// per-token means, computed by the caller), ref_c, ref_r = the reference's, beta > 0,
// eps = label_smoothing, s = sigmoid, logsig = log s, and
//   a = pi_c - ref_c,  b = pi_r - ref_r   (the log ratios: rewards / beta)
//   z = a - b = (pi_c - pi_r) - (ref_c - ref_r)   (the margin)
// The micro-batch loss is the mean of P terms (P pairs). Term i is pair i's, except for aot and
// aot_pair, which pair values of different pairs after sorting.
//
// Functions of the margin, term_i = L(z_i); dL/dpi_c = dL/dz, dL/dpi_r = -dL/dz:
//   sigmoid:  L = -(1-eps) logsig(beta z) - eps logsig(-beta z)         (eps > 0: conservative DPO)
//             dL/dz = -beta [(1-eps) s(-beta z) - eps s(beta z)]
//   robust:   L = [-(1-eps) logsig(beta z) + eps logsig(-beta z)] / (1 - 2 eps)
//             dL/dz = -beta [(1-eps) s(-beta z) + eps s(beta z)] / (1 - 2 eps)
//   hinge:    L = relu(1 - beta z),           dL/dz = -beta  where beta z < 1, else 0
//   ipo:      L = (z - 1/(2 beta))^2,         dL/dz = 2 (z - 1/(2 beta))
//   exo_pair: p = s(beta z),  L = p [logsig(beta z) - log(1-eps)] + (1-p) [logsig(-beta z) - log eps]
//             (the KL divergence of the labels (1-eps, eps) from the model's (p, 1-p); trl turns
//             eps = 0 into 1e-3, and so does this)
//             dL/dz = beta p (1-p) [beta z - log((1-eps)/eps)]        (since logit(p) = beta z)
// Functions of the log ratios, term_i = L(a_i, b_i); dL/dpi_c = dL/da, dL/dpi_r = dL/db:
//   sppo_hard: L = (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2
//              dL/da = 2 (a - 1/(2 beta)),   dL/db = 2 (b + 1/(2 beta))
//   nca_pair:  L = -logsig(beta a) - logsig(-beta a)/2 - logsig(-beta b)/2
//              dL/da = beta [s(beta a)/2 - s(-beta a)],   dL/db = beta s(beta b)/2
//   bco_pair:  L = -logsig(beta a - delta) - logsig(delta - beta b), delta = the running mean of
//              the rewards (RewardRunningMean, updated with this micro-batch first; no gradient)
//              dL/da = -beta s(delta - beta a),   dL/db = beta s(beta b - delta)
// Across the micro-batch: x_(k) = the k-th smallest of x_1..x_P; term_k = sigmoid's L(d_k):
//   aot_pair:  d_k = a_(k) - b_(k);  dL/dpi_c of the pair whose a is a_(k) is L'(d_k), dL/dpi_r of
//              the pair whose b is b_(k) is -L'(d_k)
//   aot:       d_k = (pi_c - pi_r)_(k) - (ref_c - ref_r)_(k);  pi_c and pi_r of the pair whose
//              pi_c - pi_r ranks k get L'(d_k) and -L'(d_k)
// Sorting makes aot and aot_pair non-smooth where two values tie (which pair gets the slope flips).
// The reference log-probs carry no gradient. dpolicy_* are derivatives of the sum of the terms,
// P times those of the micro-batch loss.
// Rewards (trl metrics, every type): chosen = beta a, rejected = beta b.
// trl 0.9.6's DPOTrainer refuses kto_pair, and so does this.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cst {

enum class LossType { sigmoid, robust, hinge, ipo, exo_pair, sppo_hard, nca_pair, bco_pair, aot, aot_pair };

LossType parse_loss_type(const std::string& name);  // error lists the valid names
const char* loss_type_name(LossType type);
const std::vector<LossType>& all_loss_types();

struct PreferenceLossConfig {
  LossType type = LossType::sigmoid;
  float beta = 0.1f;
  float label_smoothing = 0.0f;  // used by sigmoid, robust, exo_pair, aot, aot_pair (as in trl)
};

struct PairLogps {
  double policy_chosen = 0, policy_rejected = 0;
  double reference_chosen = 0, reference_rejected = 0;
};

struct PairLoss {
  double dpolicy_chosen = 0, dpolicy_rejected = 0;  // d(sum of terms)/d(this pair's policy log-prob)
  double reward_chosen = 0, reward_rejected = 0;
};

struct PreferenceLoss {
  std::vector<double> terms;    // trl's per-element `losses`, P of them
  std::vector<PairLoss> pairs;  // in the order of the input pairs
  double mean() const;          // the micro-batch loss
};

// bco_pair's delta: trl's RunningMoments, of which bco_pair reads only the mean. Every call of the
// loss (training and evaluation micro-batches alike, as trl calls dpo_loss for both) adds one
// sample: the mean of its 2P rewards. trl keeps the mean in float32 (sample rounded to float, then
// mean += (sample - mean) / count in float), and so does this. Checkpoints save it.
struct RewardRunningMean {
  float mean = 0;
  int64_t count = 0;
  void add(double sample);
};

// The loss is tiny (one value per pair) and runs on the host for both backends. bco_pair needs
// reward_mean, which it updates; the other types ignore it.
PreferenceLoss preference_loss(const std::vector<PairLogps>& pairs, const PreferenceLossConfig& config,
                               RewardRunningMean* reward_mean = nullptr);

}  // namespace cst
