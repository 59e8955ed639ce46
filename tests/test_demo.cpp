// A smaller run of the embedded demo (README's first command): the CST model must prefer what
// each system prompt asks for on held-out requests, and the DPO baseline must not under the
// uncensored prompt. Thresholds are the demo's own (train/demo.h).
#include <gtest/gtest.h>

#include <filesystem>

#include "train/demo.h"
#include "train/demo_assets.h"

namespace cst {
namespace {

double reward_accuracy(const EvaluationReport& report, const std::string& system) {
  for (const SystemPromptScore& row : report.rows)
    if (row.system == system) return row.reward_accuracy;
  ADD_FAILURE() << "no row for " << system;
  return 0;
}

TEST(Demo, CstFollowsBothSystemPromptsAndDpoDoesNot) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "cst_test_demo";
  std::filesystem::remove_all(dir);
  DemoSettings settings;
  settings.sft_epochs = 1;
  settings.preference_epochs = 1;
  settings.heldout_limit = 20;
  settings.generation_examples = 1;
  DemoOutcome outcome = run_demo_pipeline(dir.string(), settings, 42);
  std::printf("DPO:\n%sCST:\n%s%s", outcome.dpo.table().c_str(), outcome.cst.table().c_str(),
              outcome.generations.c_str());
  EXPECT_GE(reward_accuracy(outcome.cst, demo::kHarmlessSystem), 0.9);
  EXPECT_GE(reward_accuracy(outcome.cst, demo::kUncensoredSystem), 0.9);
  EXPECT_LT(reward_accuracy(outcome.dpo, demo::kUncensoredSystem), 0.5);
  EXPECT_TRUE(outcome.cst_follows_both);
  EXPECT_FALSE(outcome.dpo_follows_uncensored);
}

}  // namespace
}  // namespace cst
