// Does the system prompt control the model? For every distinct system prompt of an evaluation set:
//   base accuracy     the base model (adapter off) gives the preferred answer the higher log-prob
//   accuracy          the same for the trained model (adapter on)
//   reward accuracy   trl's rewards/accuracies: the implicit reward beta (pi - ref) prefers chosen
//   mean margin       mean of beta ((pi_c - ref_c) - (pi_r - ref_r))
// On CST-style data (rows + --system_prompts A B) "preferred" is the behaviour each system prompt
// asks for, so the table is the configurability table: a configurable model scores high under both.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/pair_tokenizer.h"
#include "model/transformer.h"

namespace cst {

struct SystemPromptScore {
  std::string system;
  int64_t pairs = 0;
  double base_accuracy = 0, accuracy = 0, reward_accuracy = 0, mean_margin = 0;
};

struct EvaluationReport {
  std::vector<SystemPromptScore> rows;  // in order of first appearance
  nlohmann::json to_json() const;
  std::string table() const;  // readable, one line per system prompt
};

// transformer must have been built with the adapter (adapters are toggled per pass).
// per_example_path: when not empty, a jsonl line per pair with its four log-probs.
EvaluationReport evaluate_preferences(Transformer& transformer, const std::vector<TokenizedPair>& pairs,
                                      double beta, int pairs_per_batch, int32_t pad_id,
                                      const std::string& per_example_path);

}  // namespace cst
