// Preference examples: the (system, prompt, chosen, rejected) rows DPO trains on, built from a
// table. Configurable Safety Tuning needs no new data: given two opposite system prompts A and B,
// each row (prompt, chosen, rejected) becomes (A, chosen over rejected) and (B, rejected over
// chosen), so the system prompt alone decides which answer is preferred.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/table.h"

namespace cst {

struct PreferenceExample {
  std::string system, prompt, chosen, rejected;
  int64_t source_row = 0;  // 0-based row of the table the example came from
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
//  - prompt column of message lists ([system,] user) and chosen/rejected of [assistant]: used as
//    they are.
//  - no prompt column, or a string one (ultrafeedback_binarized): the prompt is the prefix chosen
//    and rejected share (never all of the shorter one, as in trl); a string prompt must equal that
//    prefix's user message, which trl would silently ignore.
//  - a leading system message is the row's system prompt; a system column or the CST system
//    prompts as well is an error. Rows without one take the system column or the CST prompts.
//  - the answers must then be one assistant message each. cst's chat templates render one
//    [system,] user turn, so a multi-turn prompt or answer is an error naming the row and column,
//    as are null roles or contents and unexpected roles.
std::vector<PreferenceExample> build_preference_examples(const Table& table,
                                                         const PreferenceOptions& options,
                                                         PreferenceReport* report);

}  // namespace cst
