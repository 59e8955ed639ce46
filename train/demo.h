// The embedded demo (`cst_train --demo`, `make demo`): from nothing to the CST result on a CPU.
//
//  1. assets: a synthetic CST dataset of benign requests with refusal/compliance answers, a tiny
//     ChatML tokenizer and a tiny random Mistral model (train/demo_assets.h);
//  2. next-token pre-training (--loss_type sft) on both answer styles with an empty system prompt,
//     merged into the weights, so the tiny model can write answers at all;
//  3. the DPO baseline (harmless direction only) and CST (both directions) from that model;
//  4. the configurability table of both on held-out requests: CST follows each system prompt, the
//     DPO baseline stays safe under the uncensored one; and the paper's S0/S1 from greedy answers
//     to the first few held-out requests, graded by refusal phrases (train/evaluation.h).
#pragma once
#include "train/evaluation.h"
#include "train/options.h"

namespace cst {

struct DemoSettings {
  double sft_epochs = 12;
  double preference_epochs = 3;
  double preference_learning_rate = 1e-3;
  int pairs_per_batch = 4;
  int heldout_limit = 0;  // 0: every held-out request (tests use fewer)
  int generation_examples = 10;  // held-out requests answered under each system prompt (S0/S1), >= 1
};

struct DemoOutcome {
  EvaluationReport dpo, cst;
  ConfigurabilityScore dpo_generations, cst_generations;  // S0/S1 on generation_examples requests
  bool cst_follows_both = false;        // CST reward accuracy >= 0.9 under both system prompts
  bool dpo_follows_uncensored = false;  // DPO reward accuracy >= 0.5 under the uncensored prompt
  std::string generations;              // held-out requests answered by both models, both prompts
};

DemoOutcome run_demo_pipeline(const std::string& directory, const DemoSettings& settings, int seed);

// cst_train --demo: runs the pipeline in --output_dir (default demo_run), prints the tables.
// Returns true when the outcome is the expected one.
bool run_demo(const TrainOptions& options);

}  // namespace cst
