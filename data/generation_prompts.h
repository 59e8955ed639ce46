// The requests of a prompts file for generation (cst_generate --prompts): json, jsonl or parquet
// rows, each with either a 'prompt' (text: one user turn) or 'messages' (a message list: a
// conversation [system,] user, assistant, ..., user, answered after its last user turn), and
// optionally a 'system' text column.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat_template.h"

namespace cst {

struct GenerationRequest {
  std::string system;
  std::vector<ChatTurn> turns;  // alternating user/assistant from a user turn to a user turn
};

// A row's system prompt is its system message, else its 'system' cell, else default_system; a row
// with both a system message and a system cell is an error. So are rows with both or neither of
// prompt and messages, columns of the wrong kind, and conversations out of order; every error
// names the file and the row.
std::vector<GenerationRequest> read_generation_requests(const std::string& path,
                                                        const std::string& default_system);

// For outputs: the turns before the last one as [{"role", "content"}, ...] (a jsonl "history"),
// and the whole conversation as text (the prompt alone, or every turn after its role).
nlohmann::json history_json(const std::vector<ChatTurn>& turns);
std::string conversation_text(const std::vector<ChatTurn>& turns);

}  // namespace cst
