// Preference examples: the (system, prompt, chosen, rejected) rows DPO trains on, built from a
// table. Configurable Safety Tuning needs no new data: given two opposite system prompts A and B,
// each row (prompt, chosen, rejected) becomes (A, chosen over rejected) and (B, rejected over
// chosen), so the system prompt alone decides which answer is preferred. A row may also hold a
// conversation: earlier user/assistant turns before the user prompt the answers reply to.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/chat_template.h"
#include "data/table.h"

namespace cst {

struct PreferenceExample {
  std::string system, prompt, chosen, rejected;  // prompt: the last user message
  // The user/assistant turns before prompt (user first, alternating, ending with an assistant
  // turn); empty for single-turn rows and string columns.
  std::vector<ChatTurn> history;
  int64_t source_row = 0;  // 0-based row of the table the example came from

  // The turns the prompt renders: history, then the user prompt.
  std::vector<ChatTurn> prompt_turns() const;
};

// Column names in the source table. An empty system name means "the table has no system column".
struct PreferenceColumns {
  std::string system = "system", prompt = "prompt", chosen = "chosen", rejected = "rejected";
};

struct PreferenceOptions {
  PreferenceColumns columns;
  // CST: rows without a system column + two system prompts A, B -> (A, chosen over rejected) and
  // (B, rejected over chosen). dpo_baseline keeps the A direction only.
  std::optional<std::pair<std::string, std::string>> system_prompts;
  bool dpo_baseline = false;
  bool skip_bad_rows = false;  // null cells: skip and count instead of error with row number
};

struct PreferenceReport {
  int64_t rows = 0, examples = 0, skipped_rows = 0;
};

// Two ways to get the system prompt, chosen by the options:
//  - system_prompts unset: every row must have a system cell; rows are used as they are (the
//    multitask dataset, already flipped).
//  - system_prompts set: the table must not have the system column (set columns.system to "" to
//    ignore one); each row yields the A example then the B example (or only A for dpo_baseline).
// Missing columns and null cells are errors naming the table, the row (0-based, as in the data) and
// the column, unless skip_bad_rows, which skips the row and counts it in report->skipped_rows.
// report may be null.
//
// Message lists (trl's conversational format) give the same examples as the equivalent strings,
// following trl's maybe_extract_prompt (trl/data_utils.py; trl >= 0.12, the first releases with
// conversational DPO data):
//  - prompt column of message lists ([system,] user, assistant, ..., user) and chosen/rejected of
//    [assistant]: used as they are.
//  - no prompt column, or a string one (ultrafeedback_binarized): the prompt is the prefix chosen
//    and rejected share (never all of the shorter one, as in trl); a string prompt must equal that
//    prefix's last user message, which trl would silently ignore.
//  - a leading system message is the row's system prompt; a system column or the CST system
//    prompts as well is an error. Rows without one take the system column or the CST prompts
//    (which apply to multi-turn rows like any other).
//  - the prompt's turns must alternate user/assistant from a user message and end with a user
//    message: the last one is the example's prompt, the earlier ones its history. The answers must
//    then be exactly one assistant message each. Anything else (null roles or contents, other
//    roles, turns out of order, multi-message answers) is an error naming the row and column.
// The rendered prompt is the seed's recipe on the whole conversation: apply_chat_template([system]
// + history + [user prompt]) (ChatTemplate::prompt), each answer its assistant turn.
std::vector<PreferenceExample> build_preference_examples(const Table& table,
                                                         const PreferenceOptions& options,
                                                         PreferenceReport* report);

// A prompt as a message list holds it: [system,] user, assistant, ..., user.
struct PromptConversation {
  std::optional<std::string> system;  // set when the list starts with a system message
  std::vector<ChatTurn> turns;        // alternating from a user turn to a user turn
};
// Reads prompt messages; a null role or content, a misplaced role or a list that does not end with
// a user message is an error that starts with `where` and names the message (0-based).
PromptConversation read_prompt_messages(const Messages& messages, const std::string& where);

}  // namespace cst
