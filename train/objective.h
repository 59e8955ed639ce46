// The training objective of one micro-batch, on the host: from per-token log-probs to the loss,
// the gradient with respect to every token's log-prob (which Transformer::backward consumes), and
// trl's metrics.
//
// DPO family (sequence 2i = pair i's chosen, 2i+1 its rejected), every trl 0.9.6 loss_type but
// kto_pair, which trl 0.9.6 removed: sigmoid, robust, hinge, ipo, exo_pair, sppo_hard, nca_pair,
// bco_pair, aot, aot_pair:
//   pi_c, pi_r = sums of the policy's completion-token log-probs (ipo: means over the tokens)
//   ref_c, ref_r = the same for the reference (adapters disabled), or 0 when reference_free
//   loss = preference_loss(...) of the micro-batch's pairs (kernels/preference_loss.h; a mean of
//          one term per pair; aot and aot_pair sort across the pairs, bco_pair reads a running mean)
//        + rpo_alpha * NLL,  NLL = -(sum of chosen completion log-probs) / (chosen completion tokens)
// Because pi is a sum of token log-probs, d loss / d logp_t = d loss / d pi for every completion
// token t of that sequence (divided by the token count for ipo).
// sft: loss = -(sum of completion log-probs) / (completion tokens) over both sequences of a pair.
//
// Where this differs from trl 0.9.6 (on purpose):
//  - rpo_alpha weights the NLL term, as in the RPO paper and trl >= 0.10; trl 0.9.6 computed
//    alpha * dpo + NLL instead.
//  - logits/chosen and logits/rejected average the raw logits over completion tokens only; trl
//    averages over every position of its padded batch, which depends on padding.
//  - reference_free: the reference log-probs are 0 for every loss type, in the loss and the
//    rewards (rewards are beta * policy log-probs); trl zeroes them only in the margin of
//    sigmoid, robust, hinge, ipo and exo_pair, and its other losses and rewards keep the reference.
//  - bco_pair's running reward mean is saved in checkpoints; trl 0.9.6 does not save it, so a
//    resumed trl run starts it afresh. Data-parallel workers would have to share it after every
//    micro-batch (trl reduces it across processes): bco_pair runs in one process only.
//  - metrics average over the pairs of a logging window; trl averages micro-batch means (the same
//    unless micro-batches differ in size).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/preference_loss.h"

namespace cst {

enum class Objective { preference, sft };

struct ObjectiveConfig {
  Objective objective = Objective::preference;
  PreferenceLossConfig loss;
  double rpo_alpha = 0.0;
  bool reference_free = false;
  bool average_log_probs = false;  // ipo (trl divides by the token count for ipo only)
};

ObjectiveConfig objective_config_from_names(const std::string& loss_type, double beta,
                                            double label_smoothing, double rpo_alpha,
                                            bool reference_free);

// Per-sequence sums of a batch's per-token values (labels < 0 contribute nothing).
struct SequenceSums {
  std::vector<double> logps;       // sum of completion-token log-probs
  std::vector<double> logit_sums;  // sum over completion tokens of the sum of raw logits
  std::vector<int64_t> tokens;     // completion tokens
};
SequenceSums sum_per_sequence(const std::vector<float>& token_logps,
                              const std::vector<float>& token_logit_sums,
                              const std::vector<int32_t>& labels,
                              const std::vector<int32_t>& cu_seqlens);

// Sums of trl's metrics over the pairs seen, averaged when reported.
struct MetricSums {
  double loss = 0;  // sum over micro-batches of the micro-batch mean loss
  int64_t micro_batches = 0;
  int64_t pairs = 0;
  double rewards_chosen = 0, rewards_rejected = 0, accuracies = 0, margins = 0;
  double logps_chosen = 0, logps_rejected = 0;
  double logits_chosen = 0, logits_rejected = 0;  // sums of per-pair mean raw logits
  double nll = 0;              // sum over micro-batches of the rpo NLL term
  int64_t nll_micro_batches = 0;
  void add(const MetricSums& other);
  // Every field as a number, in a fixed order (for summing over data-parallel workers), and back.
  std::vector<double> values() const;
  void add_values(const std::vector<double>& values);
  // trl's names: loss, rewards/chosen, ..., logits/rejected (prefix "eval_" for evaluation).
  std::map<std::string, double> averages(const std::string& prefix) const;
};

struct ObjectiveResult {
  double loss = 0;             // mean over the micro-batch's pairs
  std::vector<float> dlogps;   // per token, already multiplied by grad_scale
  MetricSums metrics;
  // Per pair: did the policy's implicit reward prefer chosen? (for evaluation tables)
  std::vector<double> reward_margins;
};

// reference: per-sequence reference log-prob sums (ignored when reference_free or sft).
// grad_scale multiplies the gradient (1 / gradient_accumulation_steps).
// reward_mean: bco_pair's running mean of the rewards, which every call updates (training and
// evaluation alike, as in trl); required for bco_pair, unused otherwise.
ObjectiveResult compute_objective(const ObjectiveConfig& config, const SequenceSums& policy,
                                  const std::vector<double>& reference,
                                  const std::vector<int32_t>& labels,
                                  const std::vector<int32_t>& cu_seqlens, int vocab_size,
                                  double grad_scale, RewardRunningMean* reward_mean = nullptr);

}  // namespace cst
