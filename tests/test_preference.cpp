// Preference examples from tables: rows used as they are, CST flipping under two system prompts,
// the DPO baseline, and the errors for missing columns and null cells.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/preference.h"
#include "kernels/error.h"

namespace cst {
namespace {

using Cells = std::vector<std::optional<std::string>>;

Column text_column(const std::string& name, Cells cells) {
  Column column;
  column.name = name;
  column.text = std::move(cells);
  return column;
}

Table make_table(std::vector<Column> columns) {
  Table table;
  table.source = "memory.parquet";
  table.num_rows = int64_t(columns.front().text.size());
  for (const Column& column : columns) table.columns_in_source.push_back(column.name);
  table.columns = std::move(columns);
  return table;
}

Table rows_without_system() {
  return make_table({text_column("prompt", {"p0", "p1"}), text_column("chosen", {"c0", "c1"}),
                     text_column("rejected", {"r0", "r1"})});
}

PreferenceOptions cst_options() {
  PreferenceOptions options;
  options.system_prompts = std::make_pair(std::string("harmless"), std::string("uncensored"));
  return options;
}

std::string error_of(const Table& table, const PreferenceOptions& options) {
  try {
    build_preference_examples(table, options, nullptr);
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

void expect_example(const PreferenceExample& example, const char* system, const char* prompt,
                    const char* chosen, const char* rejected, int64_t row) {
  EXPECT_EQ(example.system, system);
  EXPECT_EQ(example.prompt, prompt);
  EXPECT_EQ(example.chosen, chosen);
  EXPECT_EQ(example.rejected, rejected);
  EXPECT_EQ(example.source_row, row);
}

TEST(Preference, RowsWithSystemColumnAreUsedAsTheyAre) {
  Table table =
      make_table({text_column("system", {"s0", "s1"}), text_column("prompt", {"p0", "p1"}),
                  text_column("chosen", {"c0", "c1"}), text_column("rejected", {"r0", "r1"})});
  PreferenceReport report;
  auto examples = build_preference_examples(table, PreferenceOptions{}, &report);
  ASSERT_EQ(examples.size(), 2u);
  expect_example(examples[0], "s0", "p0", "c0", "r0", 0);
  expect_example(examples[1], "s1", "p1", "c1", "r1", 1);
  EXPECT_EQ(report.rows, 2);
  EXPECT_EQ(report.examples, 2);
  EXPECT_EQ(report.skipped_rows, 0);
}

TEST(Preference, CstFlipsThePreferenceUnderTheSecondSystemPrompt) {
  PreferenceReport report;
  auto examples = build_preference_examples(rows_without_system(), cst_options(), &report);
  ASSERT_EQ(examples.size(), 4u);
  expect_example(examples[0], "harmless", "p0", "c0", "r0", 0);
  expect_example(examples[1], "uncensored", "p0", "r0", "c0", 0);
  expect_example(examples[2], "harmless", "p1", "c1", "r1", 1);
  expect_example(examples[3], "uncensored", "p1", "r1", "c1", 1);
  EXPECT_EQ(report.examples, 4);
}

TEST(Preference, DpoBaselineKeepsOnlyTheFirstDirection) {
  PreferenceOptions options = cst_options();
  options.dpo_baseline = true;
  auto examples = build_preference_examples(rows_without_system(), options, nullptr);
  ASSERT_EQ(examples.size(), 2u);
  expect_example(examples[0], "harmless", "p0", "c0", "r0", 0);
  expect_example(examples[1], "harmless", "p1", "c1", "r1", 1);
}

TEST(Preference, ConfigurableColumnNames) {
  Table table = make_table({text_column("question", {"q"}), text_column("good", {"g"}),
                            text_column("bad", {"b"}), text_column("persona", {"s"})});
  PreferenceOptions options;
  options.columns = {"persona", "question", "good", "bad"};
  auto examples = build_preference_examples(table, options, nullptr);
  ASSERT_EQ(examples.size(), 1u);
  expect_example(examples[0], "s", "q", "g", "b", 0);
}

TEST(Preference, MissingColumnListsTheColumnsInTheSource) {
  Table table = make_table(
      {text_column("prompt", {"p"}), text_column("chosen", {"c"}), text_column("answer", {"a"})});
  EXPECT_EQ(error_of(table, cst_options()),
            "memory.parquet: no rejected column 'rejected' (columns: prompt, chosen, answer)");
}

TEST(Preference, MissingSystemColumnWithoutSystemPromptsIsAnError) {
  EXPECT_EQ(error_of(rows_without_system(), PreferenceOptions{}),
            "memory.parquet: no system column 'system' (columns: prompt, chosen, rejected)");
}

TEST(Preference, SystemColumnAndSystemPromptsTogetherIsAnError) {
  Table table = make_table({text_column("system", {"s"}), text_column("prompt", {"p"}),
                            text_column("chosen", {"c"}), text_column("rejected", {"r"})});
  EXPECT_NE(error_of(table, cst_options()).find("has a system column 'system'"), std::string::npos);
  PreferenceOptions ignore_system = cst_options();
  ignore_system.columns.system = "";
  EXPECT_EQ(build_preference_examples(table, ignore_system, nullptr).size(), 2u);
}

TEST(Preference, DpoBaselineNeedsSystemPrompts) {
  Table table = make_table({text_column("system", {"s"}), text_column("prompt", {"p"}),
                            text_column("chosen", {"c"}), text_column("rejected", {"r"})});
  PreferenceOptions options;
  options.dpo_baseline = true;
  EXPECT_EQ(error_of(table, options), "dpo_baseline needs the two system prompts of CST");
}

TEST(Preference, NullCellNamesRowAndColumn) {
  Table table = make_table({text_column("prompt", {"p0", "p1", "p2"}),
                            text_column("chosen", {"c0", std::nullopt, "c2"}),
                            text_column("rejected", {"r0", "r1", std::nullopt})});
  EXPECT_EQ(error_of(table, cst_options()), "memory.parquet row 1: column 'chosen' is null");
}

TEST(Preference, SkipBadRowsCountsThem) {
  Table table = make_table({text_column("prompt", {"p0", "p1", "p2"}),
                            text_column("chosen", {"c0", std::nullopt, "c2"}),
                            text_column("rejected", {"r0", "r1", std::nullopt})});
  PreferenceOptions options = cst_options();
  options.skip_bad_rows = true;
  PreferenceReport report;
  auto examples = build_preference_examples(table, options, &report);
  ASSERT_EQ(examples.size(), 2u);
  expect_example(examples[1], "uncensored", "p0", "r0", "c0", 0);
  EXPECT_EQ(report.rows, 3);
  EXPECT_EQ(report.skipped_rows, 2);
  EXPECT_EQ(report.examples, 2);
}

TEST(Preference, IntegerColumnIsAnError) {
  Table table = rows_without_system();
  table.columns[1].is_integer = true;
  table.columns[1].text.clear();
  table.columns[1].integers = {1, 2};
  EXPECT_EQ(error_of(table, cst_options()),
            "memory.parquet: chosen column 'chosen' holds integers, expected text");
}

// The real multitask dataset: 1952 rows, each already carrying its system prompt.
TEST(Preference, RealMultitaskDataset) {
  std::string path = CST_SOURCE_DIR "/../shared/data/configurable-system-prompt-multitask.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "dataset not found at " << path;
  Table table = read_table(path, {"system", "prompt", "chosen", "rejected"});
  PreferenceReport report;
  auto examples = build_preference_examples(table, PreferenceOptions{}, &report);
  EXPECT_EQ(report.rows, 1952);
  EXPECT_EQ(report.examples, 1952);
  EXPECT_EQ(report.skipped_rows, 0);
  EXPECT_EQ(examples[1951].source_row, 1951);
  EXPECT_FALSE(examples[0].system.empty());
}

}  // namespace
}  // namespace cst
