// The DPO family of preference losses, over a micro-batch's pairs, in double on the host.
#include "kernels/preference_loss.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

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
  double loss = 0, slope = 0;  // slope: derivative with respect to the margin
};

// The sigmoid loss of a margin x (also the term of aot and aot_pair).
LossAndSlope sigmoid_loss(double x, double beta, double eps) {
  const double bx = beta * x;
  return {-(1 - eps) * log_sigmoid(bx) - eps * log_sigmoid(-bx),
          -beta * ((1 - eps) * sigmoid(-bx) - eps * sigmoid(bx))};
}

// trl's exo_pair replaces a label smoothing of 0 by 1e-3 (log eps must be finite).
double exo_smoothing(double eps) { return eps == 0 ? 1e-3 : eps; }

// Losses that depend on a pair's margin z only; see the header for each formula.
LossAndSlope loss_of_margin(double z, const PreferenceLossConfig& config) {
  const double beta = config.beta, eps = config.label_smoothing, bz = beta * z;
  switch (config.type) {
    case LossType::sigmoid:
      return sigmoid_loss(z, beta, eps);
    case LossType::robust:
      return {(-(1 - eps) * log_sigmoid(bz) + eps * log_sigmoid(-bz)) / (1 - 2 * eps),
              -beta * ((1 - eps) * sigmoid(-bz) + eps * sigmoid(bz)) / (1 - 2 * eps)};
    case LossType::hinge:
      return {std::max(0.0, 1 - bz), bz < 1 ? -beta : 0.0};
    case LossType::ipo: {
      const double gap = z - 1 / (2 * beta);
      return {gap * gap, 2 * gap};
    }
    case LossType::exo_pair: {
      const double smoothing = exo_smoothing(eps), p = sigmoid(bz), q = sigmoid(-bz);
      return {p * (log_sigmoid(bz) - std::log(1 - smoothing)) + q * (log_sigmoid(-bz) - std::log(smoothing)),
              beta * p * q * (bz - std::log((1 - smoothing) / smoothing))};
    }
    default:
      fail("preference_loss: ", loss_type_name(config.type), " is not a function of the margin");
  }
}

struct LogRatioLoss {
  double loss = 0, dchosen = 0, drejected = 0;  // derivatives with respect to a and b
};

// Losses that depend on a pair's log ratios a and b; delta is bco_pair's running reward mean.
LogRatioLoss loss_of_log_ratios(double a, double b, double delta, const PreferenceLossConfig& config) {
  const double beta = config.beta, ba = beta * a, bb = beta * b;
  switch (config.type) {
    case LossType::sppo_hard: {
      const double chosen_gap = a - 1 / (2 * beta), rejected_gap = b + 1 / (2 * beta);
      return {chosen_gap * chosen_gap + rejected_gap * rejected_gap, 2 * chosen_gap, 2 * rejected_gap};
    }
    case LossType::nca_pair:
      return {-log_sigmoid(ba) - 0.5 * log_sigmoid(-ba) - 0.5 * log_sigmoid(-bb),
              beta * (0.5 * sigmoid(ba) - sigmoid(-ba)), 0.5 * beta * sigmoid(bb)};
    case LossType::bco_pair:
      return {-log_sigmoid(ba - delta) - log_sigmoid(delta - bb), -beta * sigmoid(delta - ba),
              beta * sigmoid(bb - delta)};
    default:
      fail("preference_loss: ", loss_type_name(config.type), " is not a function of the log ratios");
  }
}

// rank_order[k] = index of the k-th smallest value (ties keep input order).
std::vector<size_t> rank_order(const std::vector<double>& values) {
  std::vector<size_t> order(values.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return values[i] < values[j]; });
  return order;
}

// aot and aot_pair: term k is the sigmoid loss of x_(k) - y_(k). Returns the terms; dx[i] and
// dy[i] receive the derivatives of their sum with respect to x_i and y_i.
std::vector<double> sorted_margin_losses(const std::vector<double>& x, const std::vector<double>& y,
                                         const PreferenceLossConfig& config, std::vector<double>& dx,
                                         std::vector<double>& dy) {
  const std::vector<size_t> x_order = rank_order(x), y_order = rank_order(y);
  std::vector<double> terms(x.size());
  dx.assign(x.size(), 0.0);
  dy.assign(y.size(), 0.0);
  for (size_t k = 0; k < x.size(); ++k) {
    const LossAndSlope term = sigmoid_loss(x[x_order[k]] - y[y_order[k]], config.beta, config.label_smoothing);
    terms[k] = term.loss;
    dx[x_order[k]] = term.slope;
    dy[y_order[k]] = -term.slope;
  }
  return terms;
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

void check_finite(const PairLogps& logps) {
  for (auto [value, what] : {std::pair{logps.policy_chosen, "policy chosen"}, {logps.policy_rejected, "policy rejected"},
                             {logps.reference_chosen, "reference chosen"}, {logps.reference_rejected, "reference rejected"}})
    if (!std::isfinite(value)) fail("preference loss: ", what, " log-prob is not finite (", value, ")");
}

// bco_pair's delta: the running mean of the rewards once this micro-batch's mean reward is added.
double bco_delta(const std::vector<PairLoss>& pairs, RewardRunningMean* reward_mean) {
  CST_CHECK(reward_mean != nullptr, "bco_pair needs the running mean of the rewards");
  double reward_sum = 0;
  for (const PairLoss& pair : pairs) reward_sum += pair.reward_chosen + pair.reward_rejected;
  reward_mean->add(reward_sum / double(2 * pairs.size()));
  return reward_mean->mean;
}

}  // namespace

const std::vector<LossType>& all_loss_types() {
  static const std::vector<LossType> types = {
      LossType::sigmoid,  LossType::robust,   LossType::hinge, LossType::ipo, LossType::exo_pair,
      LossType::sppo_hard, LossType::nca_pair, LossType::bco_pair, LossType::aot, LossType::aot_pair};
  return types;
}

LossType parse_loss_type(const std::string& name) {
  std::string names;
  for (LossType type : all_loss_types()) {
    if (name == loss_type_name(type)) return type;
    names += std::string(names.empty() ? "" : ", ") + loss_type_name(type);
  }
  fail("unknown loss_type '", name, "'", name == "kto_pair" ? " (trl 0.9.6's DPOTrainer removed it too)" : "",
       ": expected one of ", names);
}

const char* loss_type_name(LossType type) {
  switch (type) {
    case LossType::sigmoid: return "sigmoid";
    case LossType::robust: return "robust";
    case LossType::hinge: return "hinge";
    case LossType::ipo: return "ipo";
    case LossType::exo_pair: return "exo_pair";
    case LossType::sppo_hard: return "sppo_hard";
    case LossType::nca_pair: return "nca_pair";
    case LossType::bco_pair: return "bco_pair";
    case LossType::aot: return "aot";
    case LossType::aot_pair: return "aot_pair";
  }
  return "?";
}

void RewardRunningMean::add(double sample) {
  ++count;
  mean += (float(sample) - mean) / float(count);
}

double PreferenceLoss::mean() const {
  CST_CHECK(!terms.empty());
  return std::accumulate(terms.begin(), terms.end(), 0.0) / double(terms.size());
}

PreferenceLoss preference_loss(const std::vector<PairLogps>& pairs, const PreferenceLossConfig& config,
                               RewardRunningMean* reward_mean) {
  check_config(config);
  CST_CHECK(!pairs.empty(), "a preference batch holds at least one pair");
  for (const PairLogps& logps : pairs) check_finite(logps);
  const size_t count = pairs.size();
  PreferenceLoss result;
  result.terms.resize(count);
  result.pairs.resize(count);
  std::vector<double> a(count), b(count);  // the log ratios
  for (size_t i = 0; i < count; ++i) {
    a[i] = pairs[i].policy_chosen - pairs[i].reference_chosen;
    b[i] = pairs[i].policy_rejected - pairs[i].reference_rejected;
    result.pairs[i].reward_chosen = config.beta * a[i];
    result.pairs[i].reward_rejected = config.beta * b[i];
  }
  switch (config.type) {
    case LossType::sppo_hard:
    case LossType::nca_pair:
    case LossType::bco_pair: {
      const double delta = config.type == LossType::bco_pair ? bco_delta(result.pairs, reward_mean) : 0.0;
      for (size_t i = 0; i < count; ++i) {
        const LogRatioLoss term = loss_of_log_ratios(a[i], b[i], delta, config);
        result.terms[i] = term.loss;
        result.pairs[i].dpolicy_chosen = term.dchosen;
        result.pairs[i].dpolicy_rejected = term.drejected;
      }
      break;
    }
    case LossType::aot_pair: {
      std::vector<double> da, db;
      result.terms = sorted_margin_losses(a, b, config, da, db);
      for (size_t i = 0; i < count; ++i) {
        result.pairs[i].dpolicy_chosen = da[i];
        result.pairs[i].dpolicy_rejected = db[i];
      }
      break;
    }
    case LossType::aot: {
      std::vector<double> policy_margins(count), reference_margins(count), dpolicy, dreference;
      for (size_t i = 0; i < count; ++i) {
        policy_margins[i] = pairs[i].policy_chosen - pairs[i].policy_rejected;
        reference_margins[i] = pairs[i].reference_chosen - pairs[i].reference_rejected;
      }
      result.terms = sorted_margin_losses(policy_margins, reference_margins, config, dpolicy, dreference);
      for (size_t i = 0; i < count; ++i) {
        result.pairs[i].dpolicy_chosen = dpolicy[i];
        result.pairs[i].dpolicy_rejected = -dpolicy[i];
      }
      break;
    }
    default:
      for (size_t i = 0; i < count; ++i) {
        const PairLogps& p = pairs[i];  // z as trl rounds it: policy margin minus reference margin
        const double z = (p.policy_chosen - p.policy_rejected) - (p.reference_chosen - p.reference_rejected);
        const LossAndSlope term = loss_of_margin(z, config);
        result.terms[i] = term.loss;
        result.pairs[i].dpolicy_chosen = term.slope;
        result.pairs[i].dpolicy_rejected = -term.slope;
      }
  }
  return result;
}

}  // namespace cst
