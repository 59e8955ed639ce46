// Chat templates against transformers' apply_chat_template on the real jinja sources, for
// single-turn prompts and conversations of several user turns.
// Golden data: tools/python/make_tokenizer_fixtures.py -> tests/fixtures/tokenizer/chat_templates.json
// and chat_templates/<name>.jinja. Strings must be identical.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using namespace testing_support;
using nlohmann::json;

const std::string kFixtures = CST_SOURCE_DIR "/tests/fixtures/tokenizer/";

TEST(ChatTemplate, MatchesApplyChatTemplate) {
  const json golden = json::parse(read_bytes(kFixtures + "chat_templates.json"));
  const json& triples = golden["triples"];
  ASSERT_EQ(golden["rendered"].size(), chat_template_names().size());
  for (const auto& [name, rendered] : golden["rendered"].items()) {
    const ChatTemplate chat_template = chat_template_by_name(name);
    EXPECT_EQ(chat_template.name(), name);
    for (size_t i = 0; i < triples.size(); i++) {
      const std::string system = triples[i][0], user = triples[i][1], answer = triples[i][2];
      EXPECT_EQ(chat_template.prompt(system, user), rendered[i]["prompt"]) << name << " triple " << i;
      EXPECT_EQ(chat_template.generation_prompt(system, user), rendered[i]["generation_prompt"])
          << name << " triple " << i;
      EXPECT_EQ(chat_template.answer(answer), rendered[i]["answer"]) << name << " triple " << i;
    }
  }
}

std::vector<ChatTurn> golden_turns(const json& turns) {
  std::vector<ChatTurn> result;
  for (const json& turn : turns) result.push_back({turn[0], turn[1]});
  return result;
}

// [system] + turns ending with a user turn, and the answer after them; the generator also checks
// that prompt + answer is the whole conversation (except for mistral_v3, see chat_template.h).
TEST(ChatTemplate, ConversationsMatchApplyChatTemplate) {
  const json golden = json::parse(read_bytes(kFixtures + "chat_templates.json"));
  const json& conversations = golden["conversations"];
  ASSERT_GE(conversations.size(), 5u);
  ASSERT_EQ(golden["conversations_rendered"].size(), chat_template_names().size());
  for (const auto& [name, rendered] : golden["conversations_rendered"].items()) {
    const ChatTemplate chat_template = chat_template_by_name(name);
    ASSERT_EQ(rendered.size(), conversations.size()) << name;
    for (size_t i = 0; i < conversations.size(); i++) {
      const std::string system = conversations[i]["system"], answer = conversations[i]["answer"];
      const std::vector<ChatTurn> turns = golden_turns(conversations[i]["turns"]);
      EXPECT_EQ(chat_template.prompt(system, turns), rendered[i]["prompt"]) << name << " conversation " << i;
      EXPECT_EQ(chat_template.generation_prompt(system, turns), rendered[i]["generation_prompt"])
          << name << " conversation " << i;
      EXPECT_EQ(chat_template.answer(answer), rendered[i]["answer"]) << name << " conversation " << i;
    }
  }
}

TEST(ChatTemplate, TurnsMustAlternateFromAUserTurnToAUserTurn) {
  const ChatTemplate chatml = chat_template_by_name("chatml");
  auto error_for = [&](std::vector<ChatTurn> turns) {
    return error_of([&] { chatml.prompt("s", turns); });
  };
  EXPECT_EQ(error_for({}), "chat template: no turns; a prompt needs a user turn");
  const std::string alternate =
      " (turns alternate user/assistant from a user turn; the system prompt is passed separately)";
  EXPECT_EQ(error_for({{"assistant", "a"}, {"user", "u"}}),
            "chat template: turn 0 has role 'assistant', expected 'user'" + alternate);
  EXPECT_EQ(error_for({{"user", "u"}, {"user", "u2"}}),
            "chat template: turn 1 has role 'user', expected 'assistant'" + alternate);
  EXPECT_EQ(error_for({{"user", "u"}, {"system", "s"}, {"user", "u2"}}),
            "chat template: turn 1 has role 'system', expected 'assistant'" + alternate);
  const std::string ends_with_assistant =
      "chat template: the turns end with an assistant turn; a prompt ends with the user turn the "
      "answer replies to";
  EXPECT_EQ(error_for({{"user", "u"}, {"assistant", "a"}}), ends_with_assistant);
  // Every template and the generation prompt check alike, plain included.
  for (const std::string& name : chat_template_names()) {
    EXPECT_EQ(error_of([&] {
                chat_template_by_name(name).generation_prompt("s", {{"user", "u"}, {"assistant", "a"}});
              }),
              ends_with_assistant)
        << name;
  }
}

TEST(ChatTemplate, DetectsPublishedSources) {
  for (const std::string& name : chat_template_names()) {
    if (name == "plain") continue;  // no jinja source: chosen by name only
    const std::string source = read_bytes(kFixtures + "chat_templates/" + name + ".jinja");
    EXPECT_EQ(detect_chat_template(source).name(), name);
    EXPECT_EQ(detect_chat_template("\n" + source + "\n").name(), name);  // surrounding whitespace is fine
  }
}

TEST(ChatTemplate, UnknownTemplatesListTheNames) {
  // ChatML with a changed literal renders differently, so it must not be taken for ChatML.
  std::string altered = read_bytes(kFixtures + "chat_templates/chatml.jinja");
  altered.replace(altered.find("'<|im_end|>'"), 12, "'<|im_end|> '");
  const std::string detect_error = error_of([&] { detect_chat_template(altered); });
  for (const std::string& name : chat_template_names()) {
    EXPECT_NE(detect_error.find(name), std::string::npos) << detect_error;
  }
  EXPECT_NE(detect_error.find("--chat_template NAME"), std::string::npos) << detect_error;

  const std::string name_error = error_of([] { chat_template_by_name("vicuna"); });
  EXPECT_NE(name_error.find("'vicuna'"), std::string::npos) << name_error;
  EXPECT_NE(name_error.find("chatml, solar, llama2, llama3, llama3.1, mistral, mistral_v2, mistral_v3, zephyr, plain"),
            std::string::npos)
      << name_error;
  EXPECT_EQ(detect_error.find("Llama 3"), std::string::npos) << detect_error;
}

// The Llama 3.1 family is recognised by the statements that render a conversation without tools:
// Llama 3.2's source (a strftime_now date, no built-in tools) is taken for llama3.1 too.
TEST(ChatTemplate, DetectsTheLlama31Family) {
  const std::string llama3_2 = read_bytes(kFixtures + "chat_templates/llama3.2.jinja");
  EXPECT_EQ(detect_chat_template(llama3_2).name(), "llama3.1");
  // A statement that changes the rendering (here the date header's) makes it another template.
  std::string altered = read_bytes(kFixtures + "chat_templates/llama3.1.jinja");
  const std::string date_line = R"({{- "Today Date: " + date_string + "\n\n" }})";
  ASSERT_NE(altered.find(date_line), std::string::npos);
  altered.replace(altered.find(date_line), date_line.size(), R"({{- "Today: " + date_string + "\n\n" }})");
  const std::string error = error_of([&] { detect_chat_template(altered); });
  EXPECT_NE(error.find("it has Llama 3's turn markers: llama3 renders Meta-Llama-3-8B-Instruct's format, "
                       "llama3.1 that of Llama 3.1 and later"),
            std::string::npos)
      << error;
}

// The date header holds today_date: the golden renders the prompts with date_string set.
TEST(ChatTemplate, Llama31DateMatchesApplyChatTemplate) {
  const json golden = json::parse(read_bytes(kFixtures + "chat_templates.json"));
  const json& dated = golden["llama3.1_dated"];
  ChatTemplate chat_template = chat_template_by_name("llama3.1");
  EXPECT_EQ(chat_template.today_date, kLlama31DefaultDate);
  chat_template.today_date = parse_chat_template_date(dated["date"]);
  const json& triples = golden["triples"];
  ASSERT_EQ(dated["rendered"].size(), triples.size());
  for (size_t i = 0; i < triples.size(); i++) {
    const std::string system = triples[i][0], user = triples[i][1];
    EXPECT_EQ(chat_template.prompt(system, user), dated["rendered"][i]["prompt"]) << "triple " << i;
    EXPECT_EQ(chat_template.generation_prompt(system, user), dated["rendered"][i]["generation_prompt"])
        << "triple " << i;
  }
}

TEST(ChatTemplate, ChatTemplateDateIsDayMonthYearOrToday) {
  EXPECT_EQ(parse_chat_template_date("26 Jul 2024"), "26 Jul 2024");
  EXPECT_EQ(parse_chat_template_date("01 Feb 1999"), "01 Feb 1999");
  // "today" is the local date in the same form: the day's digits, a known month, the year's.
  const std::string today = parse_chat_template_date("today");
  EXPECT_EQ(parse_chat_template_date(today), today);
  for (const std::string bad : {"3 Dec 2026", "03 dec 2026", "03 December 2026", "00 Jan 2020", "32 Jan 2020",
                                "2026-12-03", "03 Dec 26", "", "Today"}) {
    const std::string error = error_of([&] { parse_chat_template_date(bad); });
    EXPECT_NE(error.find("--chat_template_date: '" + bad + "' is not a date like \"26 Jul 2024\""),
              std::string::npos)
        << error;
  }
}

TEST(ChatTemplate, EndOfTurnMarkers) {
  EXPECT_EQ(chat_template_by_name("chatml").end_of_turn(), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(chat_template_by_name("llama3").end_of_turn(), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_TRUE(chat_template_by_name("plain").end_of_turn().empty());
  // Each marker is what the template itself writes at the end of an assistant turn or the start of
  // the next user turn.
  for (const std::string& name : chat_template_names()) {
    const ChatTemplate chat_template = chat_template_by_name(name);
    const std::string conversation = chat_template.prompt("s", "u") + chat_template.answer("a") +
                                     chat_template.prompt("s", "u");
    for (const std::string& marker : chat_template.end_of_turn()) {
      EXPECT_NE(conversation.find(marker), std::string::npos) << name << " " << marker;
    }
  }
}

}  // namespace
}  // namespace cst
