#include "train/objective.h"

#include <cmath>

#include "kernels/error.h"

namespace cst {

ObjectiveConfig objective_config_from_names(const std::string& loss_type, double beta,
                                            double label_smoothing, double rpo_alpha,
                                            bool reference_free) {
  ObjectiveConfig config;
  if (loss_type == "sft") {
    config.objective = Objective::sft;
    return config;
  }
  config.loss.type = parse_loss_type(loss_type);
  config.loss.beta = float(beta);
  config.loss.label_smoothing = float(label_smoothing);
  config.rpo_alpha = rpo_alpha;
  config.reference_free = reference_free;
  config.average_log_probs = config.loss.type == LossType::ipo;
  return config;
}

SequenceSums sum_per_sequence(const std::vector<float>& token_logps,
                              const std::vector<float>& token_logit_sums,
                              const std::vector<int32_t>& labels,
                              const std::vector<int32_t>& cu_seqlens) {
  const size_t sequences = cu_seqlens.size() - 1;
  SequenceSums sums{std::vector<double>(sequences), std::vector<double>(sequences),
                    std::vector<int64_t>(sequences)};
  for (size_t s = 0; s < sequences; ++s)
    for (int32_t t = cu_seqlens[s]; t < cu_seqlens[s + 1]; ++t)
      if (labels[size_t(t)] >= 0) {
        sums.logps[s] += token_logps[size_t(t)];
        sums.logit_sums[s] += token_logit_sums[size_t(t)];
        ++sums.tokens[s];
      }
  return sums;
}

namespace {
// The one list of MetricSums' fields: visit(field) for each.
template <class Sums, class Visitor>
void for_each_field(Sums& sums, Visitor&& visit) {
  for (auto* field : {&sums.loss, &sums.rewards_chosen, &sums.rewards_rejected, &sums.accuracies, &sums.margins,
                      &sums.logps_chosen, &sums.logps_rejected, &sums.logits_chosen, &sums.logits_rejected, &sums.nll})
    visit(*field);
  for (auto* count : {&sums.micro_batches, &sums.pairs, &sums.nll_micro_batches}) visit(*count);
}
}  // namespace

void MetricSums::add(const MetricSums& other) { add_values(other.values()); }

std::vector<double> MetricSums::values() const {
  std::vector<double> result;
  for_each_field(*this, [&](const auto& field) { result.push_back(double(field)); });
  return result;
}

void MetricSums::add_values(const std::vector<double>& values) {
  size_t next = 0;
  for_each_field(*this, [&](auto& field) {
    field += std::remove_reference_t<decltype(field)>(values.at(next++));
  });
}

std::map<std::string, double> MetricSums::averages(const std::string& prefix) const {
  std::map<std::string, double> result;
  if (micro_batches == 0) return result;
  result[prefix + "loss"] = loss / double(micro_batches);
  if (pairs == 0) return result;
  const double n = double(pairs);
  result[prefix + "rewards/chosen"] = rewards_chosen / n;
  result[prefix + "rewards/rejected"] = rewards_rejected / n;
  result[prefix + "rewards/accuracies"] = accuracies / n;
  result[prefix + "rewards/margins"] = margins / n;
  result[prefix + "logps/chosen"] = logps_chosen / n;
  result[prefix + "logps/rejected"] = logps_rejected / n;
  result[prefix + "logits/chosen"] = logits_chosen / n;
  result[prefix + "logits/rejected"] = logits_rejected / n;
  if (nll_micro_batches > 0) result[prefix + "nll_loss"] = nll / double(nll_micro_batches);
  return result;
}

// Spreads a per-sequence derivative onto the sequence's completion tokens.
static void spread(std::vector<float>& dlogps, const std::vector<int32_t>& labels,
                   const std::vector<int32_t>& cu_seqlens, size_t sequence, double derivative) {
  for (int32_t t = cu_seqlens[sequence]; t < cu_seqlens[sequence + 1]; ++t)
    if (labels[size_t(t)] >= 0) dlogps[size_t(t)] += float(derivative);
}

static ObjectiveResult sft_objective(const SequenceSums& policy, const std::vector<int32_t>& labels,
                                     const std::vector<int32_t>& cu_seqlens, double grad_scale) {
  ObjectiveResult result;
  result.dlogps.assign(labels.size(), 0.0f);
  double total_logps = 0;
  int64_t total_tokens = 0;
  for (size_t s = 0; s < policy.logps.size(); ++s) {
    total_logps += policy.logps[s];
    total_tokens += policy.tokens[s];
  }
  if (total_tokens == 0) fail("a batch has no completion tokens to train on");
  result.loss = -total_logps / double(total_tokens);
  for (size_t s = 0; s < policy.logps.size(); ++s)
    spread(result.dlogps, labels, cu_seqlens, s, -grad_scale / double(total_tokens));
  result.metrics.loss = result.loss;
  result.metrics.micro_batches = 1;
  return result;
}

ObjectiveResult compute_objective(const ObjectiveConfig& config, const SequenceSums& policy,
                                  const std::vector<double>& reference,
                                  const std::vector<int32_t>& labels,
                                  const std::vector<int32_t>& cu_seqlens, int vocab_size,
                                  double grad_scale, RewardRunningMean* reward_mean) {
  if (config.objective == Objective::sft) return sft_objective(policy, labels, cu_seqlens, grad_scale);
  const size_t pairs = policy.logps.size() / 2;
  CST_CHECK(pairs * 2 == policy.logps.size() && pairs > 0, "a preference batch holds whole pairs");
  ObjectiveResult result;
  result.dlogps.assign(labels.size(), 0.0f);
  MetricSums& m = result.metrics;
  m.micro_batches = 1;
  m.pairs = int64_t(pairs);

  // The per-sequence value the loss sees: a sum, or a mean over tokens for ipo.
  auto value_of = [&](const std::vector<double>& sums, size_t s) {
    if (!config.average_log_probs) return sums[s];
    return policy.tokens[s] > 0 ? sums[s] / double(policy.tokens[s]) : 0.0;
  };
  auto tokens_divisor = [&](size_t s) {
    return config.average_log_probs && policy.tokens[s] > 0 ? double(policy.tokens[s]) : 1.0;
  };

  std::vector<PairLogps> pair_logps(pairs);
  int64_t chosen_tokens = 0;
  double chosen_logps = 0;
  for (size_t i = 0; i < pairs; ++i) {
    const size_t c = 2 * i, r = 2 * i + 1;
    if (policy.tokens[c] == 0 || policy.tokens[r] == 0)
      fail("pair with an empty answer after truncation (increase --max_length)");
    pair_logps[i].policy_chosen = value_of(policy.logps, c);
    pair_logps[i].policy_rejected = value_of(policy.logps, r);
    if (!config.reference_free) {
      pair_logps[i].reference_chosen = value_of(reference, c);
      pair_logps[i].reference_rejected = value_of(reference, r);
    }
    chosen_tokens += policy.tokens[c];
    chosen_logps += policy.logps[c];
  }
  const PreferenceLoss loss = preference_loss(pair_logps, config.loss, reward_mean);
  result.loss = loss.mean();
  for (size_t i = 0; i < pairs; ++i) {
    const size_t c = 2 * i, r = 2 * i + 1;
    const PairLoss& pair = loss.pairs[i];
    spread(result.dlogps, labels, cu_seqlens, c, grad_scale * pair.dpolicy_chosen / double(pairs) / tokens_divisor(c));
    spread(result.dlogps, labels, cu_seqlens, r, grad_scale * pair.dpolicy_rejected / double(pairs) / tokens_divisor(r));
    m.rewards_chosen += pair.reward_chosen;
    m.rewards_rejected += pair.reward_rejected;
    m.accuracies += pair.reward_chosen > pair.reward_rejected ? 1.0 : 0.0;
    m.margins += pair.reward_chosen - pair.reward_rejected;
    m.logps_chosen += pair_logps[i].policy_chosen;
    m.logps_rejected += pair_logps[i].policy_rejected;
    m.logits_chosen += policy.logit_sums[c] / (double(policy.tokens[c]) * vocab_size);
    m.logits_rejected += policy.logit_sums[r] / (double(policy.tokens[r]) * vocab_size);
    result.reward_margins.push_back(pair.reward_chosen - pair.reward_rejected);
  }
  if (config.rpo_alpha > 0) {
    const double nll = -chosen_logps / double(chosen_tokens);
    result.loss += config.rpo_alpha * nll;
    m.nll = nll;
    m.nll_micro_batches = 1;
    for (size_t i = 0; i < pairs; ++i)
      spread(result.dlogps, labels, cu_seqlens, 2 * i, -grad_scale * config.rpo_alpha / double(chosen_tokens));
  }
  m.loss = result.loss;
  return result;
}

}  // namespace cst
