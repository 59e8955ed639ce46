#include "data/generation_prompts.h"

#include "data/preference.h"
#include "data/table.h"
#include "kernels/error.h"

namespace cst {
namespace {

// The column `name` when the file has it, checked to hold the expected kind.
const Column* optional_column(const Table& table, const std::string& path, const std::string& name,
                              bool messages) {
  const Column* column = table.find(name);
  if (column && (column->is_integer || column->is_messages != messages)) {
    fail(path, ": column '", name, "' must be ", messages ? "message lists" : "text", ", not ",
         column_kind_name(*column));
  }
  return column;
}

}  // namespace

std::vector<GenerationRequest> read_generation_requests(const std::string& path,
                                                        const std::string& default_system) {
  const Table table = read_table(path, {"prompt", "messages", "system"});
  const Column* prompts = optional_column(table, path, "prompt", false);
  const Column* conversations = optional_column(table, path, "messages", true);
  const Column* systems = optional_column(table, path, "system", false);
  if (!prompts && !conversations) {
    fail(path, ": needs a text column 'prompt' or a message-list column 'messages'");
  }
  std::vector<GenerationRequest> requests;
  for (int64_t row = 0; row < table.num_rows; ++row) {
    const auto* prompt = prompts ? &prompts->text[size_t(row)] : nullptr;
    const auto* messages = conversations ? &conversations->messages[size_t(row)] : nullptr;
    const bool has_prompt = prompt && *prompt, has_messages = messages && *messages;
    if (has_prompt && has_messages) fail(path, " row ", row, ": has both a prompt and messages; give one");
    if (!has_prompt && !has_messages) {
      fail(path, " row ", row, conversations ? ": has neither a prompt nor messages" : ": prompt is null");
    }
    const auto& system_cell = systems ? systems->text[size_t(row)] : std::nullopt;
    GenerationRequest request{system_cell.value_or(default_system), {}};
    if (has_prompt) {
      request.turns = {{"user", **prompt}};
    } else {
      const std::string where = path + " row " + std::to_string(row) + ", column 'messages'";
      PromptConversation conversation = read_prompt_messages(**messages, where);
      if (conversation.system) {
        if (system_cell) fail(where, ": holds a system message and the row's 'system' column gives one; drop one");
        request.system = *conversation.system;
      }
      request.turns = std::move(conversation.turns);
    }
    requests.push_back(std::move(request));
  }
  return requests;
}

nlohmann::json history_json(const std::vector<ChatTurn>& turns) {
  nlohmann::json history = nlohmann::json::array();
  for (size_t i = 0; i + 1 < turns.size(); ++i) history.push_back({{"role", turns[i].role}, {"content", turns[i].content}});
  return history;
}

std::string conversation_text(const std::vector<ChatTurn>& turns) {
  if (turns.size() == 1) return turns[0].content;
  std::string text;
  for (const ChatTurn& turn : turns) text += (text.empty() ? "" : "\n") + turn.role + ": " + turn.content;
  return text;
}

}  // namespace cst
