// Preference examples from tables: rows used as they are, CST flipping under two system prompts,
// the DPO baseline, and the errors for missing columns and null cells. Message-list rows (trl's
// conversational format) are checked against the same rows as strings: the fixtures of
// tools/python/make_message_fixtures.py hold one set of rows in trl's format, in the
// ultrafeedback_binarized format and as strings, and all must give identical examples and tokens;
// so must the trl rows in parquet's legacy two-level list form.
// Multi-turn rows are checked against the examples that generator built them from
// (preference_multiturn.expected.json; their rendering and token ids: test_pair_tokenizer.cpp).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/pair_tokenizer.h"
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
  const Column& first = columns.front();
  table.num_rows = int64_t(first.is_messages ? first.messages.size() : first.text.size());
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
            "memory.parquet: chosen column 'chosen' holds integers, expected text or message lists");
}

Column message_column(const std::string& name, std::vector<std::optional<Messages>> cells) {
  Column column;
  column.name = name;
  column.is_messages = true;
  column.messages = std::move(cells);
  return column;
}

const std::string kFixtures = CST_SOURCE_DIR "/tests/fixtures/parquet/";

void expect_same_examples(const std::vector<PreferenceExample>& got,
                          const std::vector<PreferenceExample>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); i++) {
    expect_example(got[i], want[i].system.c_str(), want[i].prompt.c_str(), want[i].chosen.c_str(),
                   want[i].rejected.c_str(), want[i].source_row);
  }
}

// The token ids and completion masks the trainer would see, for every chat template family.
void expect_same_tokens(const std::vector<PreferenceExample>& got,
                        const std::vector<PreferenceExample>& want) {
  const Tokenizer tokenizer =
      Tokenizer::from_directory(CST_SOURCE_DIR "/tests/fixtures/tokenizer/chatml");
  for (const std::string& name : {"chatml", "llama2", "mistral_v2", "zephyr"}) {
    const ChatTemplate chat_template = chat_template_by_name(name);
    const auto got_pairs = tokenize_pairs(tokenizer, chat_template, got, {}, nullptr);
    const auto want_pairs = tokenize_pairs(tokenizer, chat_template, want, {}, nullptr);
    ASSERT_EQ(got_pairs.size(), want_pairs.size());
    for (size_t i = 0; i < got_pairs.size(); i++) {
      EXPECT_EQ(got_pairs[i].system, want_pairs[i].system) << name << " " << i;
      EXPECT_EQ(got_pairs[i].chosen.ids, want_pairs[i].chosen.ids) << name << " " << i;
      EXPECT_EQ(got_pairs[i].chosen.completion_mask, want_pairs[i].chosen.completion_mask);
      EXPECT_EQ(got_pairs[i].rejected.ids, want_pairs[i].rejected.ids) << name << " " << i;
      EXPECT_EQ(got_pairs[i].rejected.completion_mask, want_pairs[i].rejected.completion_mask);
      EXPECT_EQ(got_pairs[i].prompt_length, want_pairs[i].prompt_length) << name << " " << i;
    }
  }
}

// trl's format: prompt = [system, user], chosen = rejected = [assistant]; the system message
// stands where the string rows have a system column.
TEST(PreferenceMessages, TrlConversationalRowsEqualStringRows) {
  const auto strings = build_preference_examples(
      read_table(kFixtures + "preference_strings.parquet", {}), PreferenceOptions{}, nullptr);
  const auto messages = build_preference_examples(
      read_table(kFixtures + "preference_trl_messages.parquet", {}), PreferenceOptions{}, nullptr);
  ASSERT_EQ(strings.size(), 24u);
  expect_same_examples(messages, strings);
  expect_same_tokens(messages, strings);
}

// The same trl rows with every message list in the two-level form of older Java writers.
TEST(PreferenceMessages, TwoLevelListRowsEqualThreeLevelRows) {
  const auto three_level = build_preference_examples(
      read_table(kFixtures + "preference_trl_messages.parquet", {}), PreferenceOptions{}, nullptr);
  const auto two_level = build_preference_examples(
      read_table(kFixtures + "preference_trl_messages_two_level.parquet", {}), PreferenceOptions{},
      nullptr);
  ASSERT_EQ(three_level.size(), 24u);
  expect_same_examples(two_level, three_level);
  expect_same_tokens(two_level, three_level);
}

// ultrafeedback_binarized: a string prompt, and answers that repeat the user turn. With CST's two
// system prompts it flips like string rows, with or without its prompt column.
TEST(PreferenceMessages, UltrafeedbackRowsEqualStringRowsUnderCst) {
  PreferenceOptions options = cst_options();
  PreferenceOptions ignore_system = cst_options();
  ignore_system.columns.system = "";
  const auto strings = build_preference_examples(
      read_table(kFixtures + "preference_strings.parquet", {}), ignore_system, nullptr);
  const std::string path = kFixtures + "preference_ultrafeedback.jsonl";
  const auto with_prompt = build_preference_examples(read_table(path, {}), options, nullptr);
  const auto implicit_prompt =
      build_preference_examples(read_table(path, {"chosen", "rejected"}), options, nullptr);
  ASSERT_EQ(strings.size(), 48u);
  expect_same_examples(with_prompt, strings);
  expect_same_examples(implicit_prompt, strings);
  expect_same_tokens(with_prompt, strings);
}

TEST(PreferenceMessages, SystemMessageAndAnotherSystemSourceIsAnError) {
  const Table table = read_table(kFixtures + "preference_trl_messages.parquet", {});
  EXPECT_EQ(error_of(table, cst_options()),
            table.source +
                " row 0: the messages hold a system prompt and two system prompts were given; "
                "drop one");
  Table with_column = table;
  with_column.columns.push_back(text_column("system", Cells(24, "s")));
  with_column.columns_in_source.push_back("system");
  EXPECT_NE(error_of(with_column, PreferenceOptions{})
                .find("row 0: the messages hold a system prompt and the system column 'system' "
                      "gives one"),
            std::string::npos);
}

// trl's extract_prompt leaves its index on the last shared message when the lists never differ.
TEST(PreferenceMessages, IdenticalAnswersKeepTheirLastMessage) {
  const Messages both = {{"user", "q"}, {"assistant", "same"}};
  Table table = make_table({message_column("chosen", {both}),
                                    message_column("rejected", {both})});
  auto examples = build_preference_examples(table, cst_options(), nullptr);
  ASSERT_EQ(examples.size(), 2u);
  expect_example(examples[0], "harmless", "q", "same", "same", 0);
}

TEST(PreferenceMessages, UnrenderableRowsNameRowAndColumn) {
  const Messages user = {{"user", "q"}};
  const Messages answer = {{"assistant", "a"}};
  auto error_for = [&](std::optional<Messages> prompt, std::optional<Messages> chosen) {
    Table table = make_table({message_column("prompt", {user, prompt}),
                                      message_column("chosen", {answer, chosen}),
                                      message_column("rejected", {answer, answer})});
    return error_of(table, cst_options());
  };
  EXPECT_EQ(error_for(user, Messages{{"assistant", "a"}, {"assistant", "b"}}),
            "memory.parquet row 1, column 'chosen': an answer must be exactly one assistant "
            "message; found 2 messages after the prompt");
  EXPECT_EQ(error_for(user, Messages{{"assistant", "a"}, {"user", "q2"}, {"assistant", "b"}}),
            "memory.parquet row 1, column 'chosen': an answer must be exactly one assistant "
            "message; found 3 messages after the prompt");
  EXPECT_EQ(error_for(user, Messages{}),
            "memory.parquet row 1, column 'chosen': an answer must be exactly one assistant "
            "message; found 0 messages after the prompt");
  EXPECT_EQ(error_for(Messages{{"assistant", "q"}}, answer),
            "memory.parquet row 1, column 'prompt', message 0: role 'assistant', expected 'user'");
  EXPECT_EQ(error_for(user, Messages{{"assistant", std::nullopt}}),
            "memory.parquet row 1, column 'chosen', message 0: content is null");
  EXPECT_EQ(error_for(Messages{{"system", "s"}}, answer),
            "memory.parquet row 1, column 'prompt': the prompt has no user message");
  EXPECT_EQ(error_for(std::nullopt, answer), "memory.parquet row 1: column 'prompt' is null");
}

// Earlier turns must alternate user/assistant after the optional system message, and the prompt
// must end with the user message the answers reply to.
TEST(PreferenceMessages, MultiTurnPromptsMustAlternateAndEndWithAUserMessage) {
  const Messages user = {{"user", "q"}};
  const Messages answer = {{"assistant", "a"}};
  auto error_for = [&](const Messages& prompt) {
    Table table = make_table({message_column("prompt", {user, prompt}),
                              message_column("chosen", {answer, answer}),
                              message_column("rejected", {answer, answer})});
    return error_of(table, cst_options());
  };
  const std::string where = "memory.parquet row 1, column 'prompt'";
  EXPECT_EQ(error_for({{"user", "q"}, {"user", "q2"}}),
            where + ", message 1: role 'user', expected 'assistant' (turns must alternate "
                    "user/assistant)");
  EXPECT_EQ(error_for({{"system", "s"}, {"user", "q"}, {"assistant", "a"}, {"assistant", "b"}}),
            where + ", message 3: role 'assistant', expected 'user' (turns must alternate "
                    "user/assistant)");
  EXPECT_EQ(error_for({{"user", "q"}, {"system", "s"}, {"user", "q2"}}),
            where + ", message 1: role 'system', expected 'assistant' (turns must alternate "
                    "user/assistant)");
  EXPECT_EQ(error_for({{"user", "q"}, {"assistant", "a"}}),
            where + ": the prompt ends with an assistant message (message 1); it must end with "
                    "the user message to answer");
  EXPECT_EQ(error_for({{"user", "q"}, {"assistant", std::nullopt}, {"user", "q2"}}),
            where + ", message 1: content is null");
  EXPECT_EQ(error_for({{"user", "q"}, {std::nullopt, "a"}, {"user", "q2"}}),
            where + ", message 1: role is null");

  // An implicit prompt is checked alike: here chosen and rejected part at the second user turn,
  // so the prefix they share ends with the assistant's reply.
  Table table = make_table(
      {message_column("chosen", {Messages{{"user", "q"}, {"assistant", "a"}, {"user", "x"},
                                          {"assistant", "c"}}}),
       message_column("rejected", {Messages{{"user", "q"}, {"assistant", "a"}, {"user", "y"},
                                            {"assistant", "r"}}})});
  EXPECT_EQ(error_of(table, cst_options()),
            "memory.parquet row 0, column 'chosen' (the prompt shared with 'rejected'): the "
            "prompt ends with an assistant message (message 1); it must end with the user message "
            "to answer");
}

TEST(PreferenceMessages, StringPromptMustMatchTheSharedUserMessage) {
  Table table = make_table(
      {message_column("chosen", {Messages{{"user", "q"}, {"assistant", "a"}}}),
       message_column("rejected", {Messages{{"user", "q"}, {"assistant", "b"}}})});
  table.columns.push_back(text_column("prompt", {"another question"}));
  table.columns_in_source.push_back("prompt");
  EXPECT_EQ(error_of(table, cst_options()),
            "memory.parquet row 0, column 'prompt': the prompt differs from the last user message "
            "that 'chosen' and 'rejected' share");
}

TEST(PreferenceMessages, RowsWithoutAnySystemPromptAreAnError) {
  const Messages user = {{"user", "q"}};
  const Messages answer = {{"assistant", "a"}};
  Table table = make_table({message_column("prompt", {user}),
                                    message_column("chosen", {answer}),
                                    message_column("rejected", {answer})});
  EXPECT_EQ(error_of(table, PreferenceOptions{}),
            "memory.parquet row 0: no system prompt (no system message, no system column "
            "'system' and no system prompts given)");
  table.columns[2] = text_column("rejected", {"a"});
  EXPECT_EQ(error_of(table, cst_options()),
            "memory.parquet: chosen column 'chosen' holds message lists but rejected column "
            "'rejected' holds strings");
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(file);
}

// The examples the generator built its multi-turn rows from.
void expect_generated_examples(const std::vector<PreferenceExample>& got,
                               const nlohmann::json& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); i++) {
    const nlohmann::json& want = expected[i];
    expect_example(got[i], want["system"].get<std::string>().c_str(),
                   want["prompt"].get<std::string>().c_str(),
                   want["chosen"].get<std::string>().c_str(),
                   want["rejected"].get<std::string>().c_str(), want["source_row"].get<int64_t>());
    std::vector<ChatTurn> history;
    for (const nlohmann::json& turn : want["history"]) history.push_back({turn[0], turn[1]});
    EXPECT_EQ(got[i].history, history) << "example " << i;
    history.push_back({"user", got[i].prompt});
    EXPECT_EQ(got[i].prompt_turns(), history) << "example " << i;
  }
}

// trl's explicit-prompt format with one to three user turns: the system message, the earlier
// turns as history, the last user message as the prompt.
TEST(PreferenceMessages, MultiTurnPromptColumnRows) {
  const nlohmann::json expected = read_json(kFixtures + "preference_multiturn.expected.json");
  const auto examples = build_preference_examples(
      read_table(kFixtures + "preference_multiturn_trl.parquet", {}), PreferenceOptions{}, nullptr);
  expect_generated_examples(examples, expected["trl_examples"]);
  size_t longest_history = 0;
  for (const PreferenceExample& example : examples) {
    longest_history = std::max(longest_history, example.history.size());
  }
  EXPECT_EQ(longest_history, 4u);  // three user turns
}

// Whole conversations in chosen and rejected (JSON lines), the prompt being the prefix they share,
// under CST's two system prompts: each row flips with its history, with or without the string
// prompt column (the last user message).
TEST(PreferenceMessages, MultiTurnImplicitPromptsUnderCst) {
  const nlohmann::json expected = read_json(kFixtures + "preference_multiturn.expected.json");
  const auto& system_prompts = expected["cst_system_prompts"];
  PreferenceOptions options;
  options.system_prompts = std::make_pair(system_prompts[0].get<std::string>(),
                                          system_prompts[1].get<std::string>());
  const std::string path = kFixtures + "preference_multiturn_implicit.jsonl";
  expect_generated_examples(build_preference_examples(read_table(path, {}), options, nullptr),
                            expected["cst_examples"]);
  expect_generated_examples(
      build_preference_examples(read_table(path, {"chosen", "rejected"}), options, nullptr),
      expected["cst_examples"]);
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
