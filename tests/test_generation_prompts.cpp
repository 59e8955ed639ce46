// Prompts files for generation (cst_generate --prompts): rows with a prompt or a conversation
// ('messages'), their system prompts, and the errors for rows that cannot be answered. What the
// requests render to is the chat templates' generation_prompt, checked against transformers in
// test_chat_template.cpp.
#include <gtest/gtest.h>

#include <fstream>

#include "data/generation_prompts.h"
#include "test_support.h"

namespace cst {
namespace {

using testing_support::error_of;
using testing_support::fresh_test_dir;

// A prompts file of the given JSON lines.
std::string prompts_file(const std::string& name, const std::vector<std::string>& lines) {
  const std::string path = (fresh_test_dir("generation_prompts") / (name + ".jsonl")).string();
  std::ofstream file(path);
  for (const std::string& line : lines) file << line << "\n";
  return path;
}

TEST(GenerationPrompts, PromptsAndConversationsWithTheirSystemPrompts) {
  const std::string path = prompts_file(
      "mixed",
      {R"({"prompt": "Hi"})", R"({"prompt": "Hola", "system": "Spanish"})",
       R"({"messages": [{"role": "system", "content": "Terse"}, {"role": "user", "content": "a"},)"
       R"( {"role": "assistant", "content": "b"}, {"role": "user", "content": "c 🙂"}]})",
       R"({"messages": [{"role": "user", "content": "x"}], "system": "From the column"})",
       R"({"messages": [{"role": "user", "content": "y"}, {"role": "assistant", "content": ""},)"
       R"( {"role": "user", "content": "z"}]})"});
  const std::vector<GenerationRequest> requests = read_generation_requests(path, "Default");
  ASSERT_EQ(requests.size(), 5u);
  EXPECT_EQ(requests[0].system, "Default");
  EXPECT_EQ(requests[0].turns, (std::vector<ChatTurn>{{"user", "Hi"}}));
  EXPECT_EQ(requests[1].system, "Spanish");
  EXPECT_EQ(requests[1].turns, (std::vector<ChatTurn>{{"user", "Hola"}}));
  EXPECT_EQ(requests[2].system, "Terse");
  EXPECT_EQ(requests[2].turns,
            (std::vector<ChatTurn>{{"user", "a"}, {"assistant", "b"}, {"user", "c 🙂"}}));
  EXPECT_EQ(requests[3].system, "From the column");
  EXPECT_EQ(requests[3].turns, (std::vector<ChatTurn>{{"user", "x"}}));
  EXPECT_EQ(requests[4].system, "Default");
  EXPECT_EQ(requests[4].turns,
            (std::vector<ChatTurn>{{"user", "y"}, {"assistant", ""}, {"user", "z"}}));
}

TEST(GenerationPrompts, RowsThatCannotBeAnsweredAreErrorsNamingTheRow) {
  const std::string user = R"({"role": "user", "content": "u"})";
  const std::string assistant = R"({"role": "assistant", "content": "a"})";
  // Row 0 has a prompt and row 2 messages; row 1 is the bad one.
  auto error_for = [&](const std::string& line) {
    const std::string path = prompts_file(
        "bad", {R"({"prompt": "fine"})", line, R"({"messages": [)" + user + "]}"});
    return std::make_pair(path, error_of([&] { read_generation_requests(path, ""); }));
  };
  auto [path, error] = error_for(R"({"prompt": "p", "messages": [)" + user + "]}");
  EXPECT_EQ(error, path + " row 1: has both a prompt and messages; give one");
  std::tie(path, error) = error_for(R"({"system": "s"})");
  EXPECT_EQ(error, path + " row 1: has neither a prompt nor messages");
  std::tie(path, error) = error_for(R"({"messages": [)" + user + ", " + assistant + "]}");
  EXPECT_EQ(error, path + " row 1, column 'messages': the prompt ends with an assistant message "
                          "(message 1); it must end with the user message to answer");
  std::tie(path, error) = error_for(R"({"messages": [)" + user + ", " + user + "]}");
  EXPECT_EQ(error, path + " row 1, column 'messages', message 1: role 'user', expected "
                          "'assistant' (turns must alternate user/assistant)");
  std::tie(path, error) = error_for(
      R"({"system": "s", "messages": [{"role": "system", "content": "t"}, )" + user + "]}");
  EXPECT_EQ(error, path + " row 1, column 'messages': holds a system message and the row's "
                          "'system' column gives one; drop one");

  const std::string prompt_only = prompts_file("prompt_only", {R"({"prompt": "p"})", "{}"});
  EXPECT_EQ(error_of([&] { read_generation_requests(prompt_only, ""); }),
            prompt_only + " row 1: prompt is null");
  const std::string text_messages = prompts_file("text_messages", {R"({"messages": "hello"})"});
  EXPECT_EQ(error_of([&] { read_generation_requests(text_messages, ""); }),
            text_messages + ": column 'messages' must be message lists, not strings");
  const std::string neither = prompts_file("neither", {R"({"question": "hello"})"});
  EXPECT_EQ(error_of([&] { read_generation_requests(neither, ""); }),
            neither + ": needs a text column 'prompt' or a message-list column 'messages'");
}

}  // namespace
}  // namespace cst
