#include "train/evaluation.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "data/batch.h"
#include "train/objective.h"

namespace cst {

nlohmann::json EvaluationReport::to_json() const {
  nlohmann::json rows_json = nlohmann::json::array();
  for (const SystemPromptScore& row : rows)
    rows_json.push_back({{"system", row.system}, {"pairs", row.pairs},
                         {"base_accuracy", row.base_accuracy}, {"accuracy", row.accuracy},
                         {"reward_accuracy", row.reward_accuracy}, {"mean_margin", row.mean_margin}});
  return {{"system_prompts", rows_json}};
}

std::string EvaluationReport::table() const {
  std::ostringstream text;
  char line[512];
  std::snprintf(line, sizeof line, "%-62s %6s %9s %9s %9s %9s\n", "system prompt", "pairs",
                "base acc", "acc", "rew. acc", "margin");
  text << line;
  for (const SystemPromptScore& row : rows) {
    std::string shown = row.system.size() > 60 ? row.system.substr(0, 57) + "..." : row.system;
    std::snprintf(line, sizeof line, "%-62s %6lld %9.3f %9.3f %9.3f %9.3f\n", ("\"" + shown + "\"").c_str(),
                  (long long)row.pairs, row.base_accuracy, row.accuracy, row.reward_accuracy, row.mean_margin);
    text << line;
  }
  return text.str();
}

static std::vector<double> sequence_logps(Transformer& transformer, const Batch& batch, bool adapters) {
  ForwardOptions options;
  options.adapters_enabled = adapters;
  TokenLogps logps = transformer.forward({batch.tokens, batch.positions, batch.labels, batch.cu_seqlens}, options);
  return sum_per_sequence(logps.logps, logps.logit_sums, batch.labels, batch.cu_seqlens).logps;
}

EvaluationReport evaluate_preferences(Transformer& transformer, const std::vector<TokenizedPair>& pairs,
                                      double beta, int pairs_per_batch, int32_t pad_id,
                                      const std::string& per_example_path) {
  struct Sums {
    int64_t pairs = 0;
    double base_correct = 0, correct = 0, reward_correct = 0, margin = 0;
  };
  std::vector<std::string> order;
  std::map<std::string, Sums> by_system;
  std::ofstream per_example;
  if (!per_example_path.empty()) {
    per_example.open(per_example_path + ".tmp");
    if (!per_example) fail("--per_example: cannot write ", per_example_path);
  }
  for (size_t begin = 0; begin < pairs.size(); begin += size_t(pairs_per_batch)) {
    std::vector<int64_t> indices;
    for (size_t i = begin; i < std::min(pairs.size(), begin + size_t(pairs_per_batch)); ++i) indices.push_back(int64_t(i));
    Batch batch = make_batch(pairs, indices, true, pad_id);
    std::vector<double> reference = sequence_logps(transformer, batch, false);
    std::vector<double> policy = sequence_logps(transformer, batch, true);
    for (size_t i = 0; i < indices.size(); ++i) {
      const TokenizedPair& pair = pairs[size_t(indices[i])];
      const double pc = policy[2 * i], pr = policy[2 * i + 1], rc = reference[2 * i], rr = reference[2 * i + 1];
      const double margin = beta * ((pc - rc) - (pr - rr));
      if (!by_system.count(pair.system)) order.push_back(pair.system);
      Sums& sums = by_system[pair.system];
      ++sums.pairs;
      sums.base_correct += rc > rr;
      sums.correct += pc > pr;
      sums.reward_correct += margin > 0;
      sums.margin += margin;
      if (per_example.is_open())
        per_example << nlohmann::json{{"example_index", pair.example_index}, {"system", pair.system},
                                      {"policy_chosen_logps", pc}, {"policy_rejected_logps", pr},
                                      {"reference_chosen_logps", rc}, {"reference_rejected_logps", rr}}
                           .dump()
                    << "\n";
    }
  }
  if (per_example.is_open()) {
    if (!per_example.flush()) fail("--per_example: cannot write ", per_example_path);
    per_example.close();
    std::filesystem::rename(per_example_path + ".tmp", per_example_path);
  }
  EvaluationReport report;
  for (const std::string& system : order) {
    const Sums& sums = by_system[system];
    const double n = double(sums.pairs);
    report.rows.push_back({system, sums.pairs, sums.base_correct / n, sums.correct / n,
                           sums.reward_correct / n, sums.margin / n});
  }
  return report;
}

}  // namespace cst
