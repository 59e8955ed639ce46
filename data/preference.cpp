#include "data/preference.h"

#include <algorithm>
#include <sstream>

#include "kernels/error.h"

namespace cst {
namespace {

std::string list_columns(const Table& table) {
  std::ostringstream list;
  for (size_t i = 0; i < table.columns_in_source.size(); i++) {
    list << (i ? ", " : "") << table.columns_in_source[i];
  }
  return list.str();
}

size_t cell_count(const Column& column) {
  return column.is_messages ? column.messages.size() : column.text.size();
}

// A column the examples are read from: strings, or message lists where allow_messages.
const Column& data_column(const Table& table, const std::string& name, const char* role,
                          bool allow_messages) {
  const Column* column = table.find(name);
  if (column == nullptr) {
    fail(table.source, ": no ", role, " column '", name, "' (columns: ", list_columns(table), ")");
  }
  if (column->is_integer || (column->is_messages && !allow_messages)) {
    fail(table.source, ": ", role, " column '", name, "' holds ", column_kind_name(*column),
         ", expected text", allow_messages ? " or message lists" : "");
  }
  if (int64_t(cell_count(*column)) != table.num_rows) {
    fail(table.source, ": column '", name, "' has ", cell_count(*column), " cells for ",
         table.num_rows, " rows");
  }
  return *column;
}

// The columns one example is read from. system is null when the options or the rows' system
// messages supply it; prompt is null when chosen and rejected carry it (an implicit prompt).
struct SourceColumns {
  const Column* system = nullptr;
  const Column* prompt = nullptr;
  const Column *chosen, *rejected;
  bool conversational = false;  // chosen and rejected are message lists
};

SourceColumns find_source_columns(const Table& table, const PreferenceOptions& options) {
  const PreferenceColumns& names = options.columns;
  SourceColumns columns{nullptr, nullptr, &data_column(table, names.chosen, "chosen", true),
                        &data_column(table, names.rejected, "rejected", true), false};
  columns.conversational = columns.chosen->is_messages;
  if (columns.rejected->is_messages != columns.conversational) {
    fail(table.source, ": chosen column '", names.chosen, "' holds ",
         column_kind_name(*columns.chosen), " but rejected column '", names.rejected, "' holds ",
         column_kind_name(*columns.rejected));
  }
  // trl's maybe_extract_prompt: message-list answers may carry the prompt themselves.
  if (!columns.conversational || table.find(names.prompt) != nullptr) {
    columns.prompt = &data_column(table, names.prompt, "prompt", columns.conversational);
  }
  bool has_system_column = !names.system.empty() && table.find(names.system) != nullptr;
  if (options.system_prompts) {
    // A system column and two system prompts would silently compete; make the caller choose.
    if (has_system_column) {
      fail(
          table.source, ": has a system column '", names.system,
          "' and two system prompts were given; drop one (an empty system column name ignores it)");
    }
  } else {
    if (options.dpo_baseline) fail("dpo_baseline needs the two system prompts of CST");
    // Message lists may carry a system message per row, checked row by row.
    if (columns.conversational && !has_system_column) return columns;
    if (names.system.empty()) fail(table.source, ": no system column and no system prompts given");
    columns.system = &data_column(table, names.system, "system", false);
  }
  return columns;
}

bool is_null(const Column* column, int64_t row) {
  return column->is_messages ? !column->messages[size_t(row)] : !column->text[size_t(row)];
}

const Column* first_null_column(const SourceColumns& columns, int64_t row) {
  for (const Column* column : {columns.system, columns.prompt, columns.chosen, columns.rejected}) {
    if (column != nullptr && is_null(column, row)) return column;
  }
  return nullptr;
}

// One row's texts; system is set when the row's messages carry a system prompt.
struct RowTexts {
  std::optional<std::string> system;
  std::string prompt, chosen, rejected;
  std::vector<ChatTurn> history;
};

std::string row_and_column(const Table& table, int64_t row, const Column& column) {
  return table.source + " row " + std::to_string(row) + ", column '" + column.name + "'";
}

// A message's role or content; null is an error naming the message.
const std::string& message_field(const std::optional<std::string>& field, const char* name,
                                 const std::string& where, size_t index) {
  if (!field) fail(where, ", message ", index, ": ", name, " is null");
  return *field;
}

// The prompt messages [system,] user, assistant, ..., user as the example's system prompt,
// history and prompt.
void split_prompt(const Messages& prompt, const std::string& where, RowTexts& texts) {
  PromptConversation conversation = read_prompt_messages(prompt, where);
  texts.system = std::move(conversation.system);
  texts.prompt = std::move(conversation.turns.back().content);
  conversation.turns.pop_back();
  texts.history = std::move(conversation.turns);
}

// An answer: the one assistant message left after the prompt.
std::string answer_text(const Messages& answer, size_t first, const std::string& where) {
  if (answer.size() != first + 1) {
    fail(where, ": an answer must be exactly one assistant message; found ", answer.size() - first,
         " messages after the prompt");
  }
  const std::string& role = message_field(answer[first].role, "role", where, first);
  if (role != "assistant") {
    fail(where, ", message ", first, ": role '", role, "', expected 'assistant'");
  }
  return message_field(answer[first].content, "content", where, first);
}

// trl's extract_prompt on message lists: the longest prefix chosen and rejected share, but never
// all of the shorter one (trl's loop stops with its index on the last message).
size_t shared_prefix_length(const Messages& chosen, const Messages& rejected) {
  const size_t common = std::min(chosen.size(), rejected.size());
  for (size_t i = 0; i < common; i++) {
    if (!(chosen[i] == rejected[i])) return i;
  }
  return common == 0 ? 0 : common - 1;
}

// A row of message lists, by trl's maybe_extract_prompt: a message-list prompt is used as it
// is; otherwise the prompt is the prefix chosen and rejected share, and a string prompt beside
// them (ultrafeedback_binarized) must be that prefix's last user message.
RowTexts conversational_row(const Table& table, const SourceColumns& columns, int64_t row) {
  const Messages& chosen = *columns.chosen->messages[size_t(row)];
  const Messages& rejected = *columns.rejected->messages[size_t(row)];
  const std::string chosen_where = row_and_column(table, row, *columns.chosen);
  const std::string rejected_where = row_and_column(table, row, *columns.rejected);
  RowTexts texts;
  size_t answer_start = 0;
  if (columns.prompt != nullptr && columns.prompt->is_messages) {
    split_prompt(*columns.prompt->messages[size_t(row)],
                 row_and_column(table, row, *columns.prompt), texts);
  } else {
    answer_start = shared_prefix_length(chosen, rejected);
    const Messages prefix(chosen.begin(), chosen.begin() + ptrdiff_t(answer_start));
    split_prompt(prefix, chosen_where + " (the prompt shared with '" + columns.rejected->name + "')",
                 texts);
    if (columns.prompt != nullptr && *columns.prompt->text[size_t(row)] != texts.prompt) {
      fail(row_and_column(table, row, *columns.prompt), ": the prompt differs from the last user ",
           "message that '", columns.chosen->name, "' and '", columns.rejected->name, "' share");
    }
  }
  texts.chosen = answer_text(chosen, answer_start, chosen_where);
  texts.rejected = answer_text(rejected, answer_start, rejected_where);
  return texts;
}

RowTexts string_row(const SourceColumns& columns, int64_t row) {
  return {std::nullopt, *columns.prompt->text[size_t(row)], *columns.chosen->text[size_t(row)],
          *columns.rejected->text[size_t(row)], {}};
}

// The example of a row under a system prompt; flipped swaps the answers (CST's second direction).
PreferenceExample make_example(const std::string& system, const RowTexts& texts, bool flipped,
                               int64_t row) {
  return {system, texts.prompt, flipped ? texts.rejected : texts.chosen,
          flipped ? texts.chosen : texts.rejected, texts.history, row};
}

}  // namespace

std::vector<ChatTurn> PreferenceExample::prompt_turns() const {
  std::vector<ChatTurn> turns = history;
  turns.push_back({"user", prompt});
  return turns;
}

PromptConversation read_prompt_messages(const Messages& messages, const std::string& where) {
  PromptConversation conversation;
  size_t first = 0;
  if (!messages.empty() && message_field(messages[0].role, "role", where, 0) == "system") {
    conversation.system = message_field(messages[0].content, "content", where, 0);
    first = 1;
  }
  if (messages.size() == first) fail(where, ": the prompt has no user message");
  for (size_t i = first; i < messages.size(); i++) {
    const std::string& role = message_field(messages[i].role, "role", where, i);
    const char* expected = expected_turn_role(i - first);
    if (role != expected) {
      fail(where, ", message ", i, ": role '", role, "', expected '", expected, "'",
           i > first ? " (turns must alternate user/assistant)" : "");
    }
    conversation.turns.push_back({role, message_field(messages[i].content, "content", where, i)});
  }
  if (conversation.turns.back().role != "user") {
    fail(where, ": the prompt ends with an assistant message (message ", messages.size() - 1,
         "); it must end with the user message to answer");
  }
  return conversation;
}

std::vector<PreferenceExample> build_preference_examples(const Table& table,
                                                         const PreferenceOptions& options,
                                                         PreferenceReport* report) {
  if (table.num_rows == 0) fail(table.source, ": the dataset is empty (0 rows)");
  SourceColumns columns = find_source_columns(table, options);
  PreferenceReport counts;
  counts.rows = table.num_rows;
  std::vector<PreferenceExample> examples;
  for (int64_t row = 0; row < table.num_rows; row++) {
    if (const Column* null_column = first_null_column(columns, row)) {
      if (!options.skip_bad_rows) {
        fail(table.source, " row ", row, ": column '", null_column->name, "' is null");
      }
      counts.skipped_rows++;
      continue;
    }
    RowTexts texts =
        columns.conversational ? conversational_row(table, columns, row) : string_row(columns, row);
    if (texts.system) {
      // The row's own system message; a second source would silently compete with it.
      if (options.system_prompts || columns.system != nullptr) {
        fail(table.source, " row ", row, ": the messages hold a system prompt and ",
             options.system_prompts ? "two system prompts were given"
                                    : "the system column '" + columns.system->name + "' gives one",
             "; drop one");
      }
      examples.push_back(make_example(*texts.system, texts, false, row));
      continue;
    }
    if (!options.system_prompts) {
      if (columns.system == nullptr) {
        fail(table.source, " row ", row, ": no system prompt (no system message, no system column '",
             options.columns.system, "' and no system prompts given)");
      }
      examples.push_back(make_example(*columns.system->text[size_t(row)], texts, false, row));
      continue;
    }
    const auto& [system_a, system_b] = *options.system_prompts;
    examples.push_back(make_example(system_a, texts, false, row));
    if (!options.dpo_baseline) examples.push_back(make_example(system_b, texts, true, row));
  }
  counts.examples = int64_t(examples.size());
  if (report != nullptr) *report = counts;
  return examples;
}

}  // namespace cst
