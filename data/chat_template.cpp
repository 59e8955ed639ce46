// Chat templates, each written out as the string its jinja source renders for a [system] + turns
// prompt and the assistant turn (see chat_template.h).
#include "data/chat_template.h"

#include <algorithm>
#include <array>
#include <ctime>
#include <string_view>

#include "kernels/error.h"

namespace cst {

namespace {

struct KnownTemplate {
  ChatTemplateKind kind;
  const char* name;
  const char* jinja_source;  // the published template, recognised by detect_chat_template (exactly)
};

const KnownTemplate kKnownTemplates[] = {
    {ChatTemplateKind::chatml, "chatml",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
     "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
    {ChatTemplateKind::solar, "solar",
     "{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content']%}{{'### System:\n' "
     "+ message['content']+'\n\n'}}{% endif %}{% elif message['role'] == 'user' %}{{'### User:\n' + "
     "message['content']+'\n\n'}}{% elif message['role'] == 'assistant' %}{{'### Assistant:\n'  + "
     "message['content']}}{% endif %}{% if loop.last and add_generation_prompt %}{{ '### Assistant:\n' }}{% endif "
     "%}{% endfor %}"},
    {ChatTemplateKind::llama2, "llama2",
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
     "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
     "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
     "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
     "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
     "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"},
    // Meta-Llama-3-8B-Instruct's tokenizer_config.json since May 2024 (the first release added the
    // generation prompt unconditionally). The "\n\n" are newline characters in the source.
    {ChatTemplateKind::llama3, "llama3",
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
     "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
     "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    // Meta's Llama 3.1 / 3.2 / 3.3 Instruct templates: recognised by the fragments that render a
    // conversation without tools (kLlama31Fragments below).
    {ChatTemplateKind::llama3_1, "llama3.1", nullptr},
    {ChatTemplateKind::mistral, "mistral",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
     "'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
     "assistant roles are supported!') }}{% endif %}{% endfor %}"},
    // Multi-line sources as raw strings, written exactly as published (the trailing newline included).
    {ChatTemplateKind::mistral_v2, "mistral_v2", R"jinja({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)jinja"},
    {ChatTemplateKind::mistral_v3, "mistral_v3", R"jinja({%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
)jinja"},
    {ChatTemplateKind::zephyr, "zephyr",
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
     "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token "
     "}}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% "
     "endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"},
    {ChatTemplateKind::plain, "plain", nullptr},
};

// The Llama 3.1 family's templates were revised several times (tool calls, the date: a fixed
// "26 Jul 2024" in 3.1, strftime_now in 3.2), but each writes a conversation without tools with
// these statements, tools aside: BOS, the system turn with the date header and the trimmed system
// prompt (always, even when empty), every turn trimmed, and the generation prompt. A template
// holding all of them renders such conversations as llama3.1 does. "\n" is a backslash and n in
// the source.
const char* const kLlama31Fragments[] = {
    R"({{- bos_token }})",
    R"({%- set system_message = messages[0]['content']|trim %})",
    R"({%- set system_message = "" %})",
    R"({{- "<|start_header_id|>system<|end_header_id|>\n\n" }})",
    R"({{- "Cutting Knowledge Date: December 2023\n" }})",
    R"({{- "Today Date: " + date_string + "\n\n" }})",
    R"({{- system_message }})",
    R"({{- "<|eot_id|>" }})",
    R"({{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }})",
    R"({{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }})",
};

bool is_llama3_1_family(const std::string& source) {
  for (const char* fragment : kLlama31Fragments)
    if (source.find(fragment) == std::string::npos) return false;
  return true;
}

const KnownTemplate& known(ChatTemplateKind kind) {
  for (const KnownTemplate& known_template : kKnownTemplates) {
    if (known_template.kind == kind) return known_template;
  }
  fail("chat template: unknown kind ", static_cast<int>(kind));
}

// Whitespace as Python's str.strip() sees it (what jinja's .strip() calls), as UTF-8.
const char* const kPythonWhitespace[] = {
    "\t", "\n", "\v", "\f", "\r", "\x1c", "\x1d", "\x1e", "\x1f", " ", "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80",
    "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85",
    "\xE2\x80\x86", "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8",
    "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};

// Length of the whitespace character at the start (at_end = false) or end of text; 0 if none.
size_t whitespace_length(std::string_view text, bool at_end) {
  for (std::string_view space : kPythonWhitespace) {
    if (text.size() < space.size()) continue;
    if (text.substr(at_end ? text.size() - space.size() : 0, space.size()) == space) return space.size();
  }
  return 0;
}

std::string python_strip(std::string_view text) {
  while (size_t length = whitespace_length(text, false)) text.remove_prefix(length);
  while (size_t length = whitespace_length(text, true)) text.remove_suffix(length);
  return std::string(text);
}

// The seed's rule for a model without a system role: one user turn holding both.
std::string fold_system_into_user(const std::string& system, const std::string& user) {
  return system.empty() ? user : system + "\n\n" + user;
}

std::string chatml_turn(const std::string& role, const std::string& content) {
  return "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
}

std::string llama3_turn(const std::string& role, const std::string& content) {
  return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + python_strip(content) + "<|eot_id|>";
}

const char* const kLlama3AssistantHeader = "<|start_header_id|>assistant<|end_header_id|>\n\n";

// Llama 3.1's system turn: a date header before the system prompt, written even when it is empty.
std::string llama3_1_system_turn(const std::string& system, const std::string& today_date) {
  return "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " +
         today_date + "\n\n" + python_strip(system) + "<|eot_id|>";
}

// Turns must alternate user/assistant from a user turn and end with a user turn.
void check_prompt_turns(const std::vector<ChatTurn>& turns) {
  if (turns.empty()) fail("chat template: no turns; a prompt needs a user turn");
  for (size_t i = 0; i < turns.size(); i++) {
    const char* expected = expected_turn_role(i);
    if (turns[i].role != expected) {
      fail("chat template: turn ", i, " has role '", turns[i].role, "', expected '", expected,
           "' (turns alternate user/assistant from a user turn; the system prompt is passed ",
           "separately)");
    }
  }
  if (turns.back().role != "user") {
    fail("chat template: the turns end with an assistant turn; a prompt ends with the user turn the ",
         "answer replies to");
  }
}

// What the template writes before the first turn: the system prompt where it has a turn of its
// own, and BOS where the template writes it once.
std::string conversation_start(const ChatTemplate& chat_template, const std::string& system) {
  switch (chat_template.kind) {
    case ChatTemplateKind::chatml: return chatml_turn("system", system);
    case ChatTemplateKind::solar: return system.empty() ? "" : "### System:\n" + system + "\n\n";
    case ChatTemplateKind::zephyr: return "<|system|>\n" + system + "</s>\n";
    case ChatTemplateKind::llama3: return "<|begin_of_text|>" + llama3_turn("system", system);
    case ChatTemplateKind::llama3_1:
      return "<|begin_of_text|>" + llama3_1_system_turn(system, chat_template.today_date);
    case ChatTemplateKind::mistral:
    case ChatTemplateKind::mistral_v2:
    case ChatTemplateKind::mistral_v3: return "<s>";
    case ChatTemplateKind::llama2:
    case ChatTemplateKind::plain: return "";
  }
  fail("chat template: unknown kind ", static_cast<int>(chat_template.kind));
}

// A user turn; the templates without a system turn of their own write the system prompt into the
// first user turn (llama2, mistral, mistral_v2) or the last (mistral_v3).
std::string user_turn(ChatTemplateKind kind, const std::string& system, const std::string& content,
                      bool first, bool last) {
  switch (kind) {
    case ChatTemplateKind::chatml: return chatml_turn("user", content);
    case ChatTemplateKind::solar: return "### User:\n" + content + "\n\n";
    case ChatTemplateKind::zephyr: return "<|user|>\n" + content + "</s>\n";
    case ChatTemplateKind::llama3:
    case ChatTemplateKind::llama3_1: return llama3_turn("user", content);
    case ChatTemplateKind::llama2:
      return "<s>[INST] " +
             python_strip(first ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content : content) +
             " [/INST]";
    case ChatTemplateKind::mistral:
      return "[INST] " + (first ? fold_system_into_user(system, content) : content) + " [/INST]";
    case ChatTemplateKind::mistral_v2:
      return " [INST] " + (first ? system + "\n\n" + content : content) + " [/INST]";
    case ChatTemplateKind::mistral_v3:
      return "[INST] " + (last ? system + "\n\n" + content : content) + "[/INST]";
    case ChatTemplateKind::plain: break;  // rendered whole by plain_conversation
  }
  fail("chat template: no user turn for kind ", static_cast<int>(kind));
}

// No template: the system prompt (when not empty) and the turns' texts, one paragraph each.
std::string plain_conversation(const std::string& system, const std::vector<ChatTurn>& turns) {
  std::string text = system;
  for (const ChatTurn& turn : turns) text += (text.empty() ? "" : "\n\n") + turn.content;
  return text;
}

}  // namespace

const char* expected_turn_role(size_t turn_index) {
  return turn_index % 2 == 0 ? "user" : "assistant";
}

std::string ChatTemplate::prompt(const std::string& system,
                                 const std::vector<ChatTurn>& turns) const {
  check_prompt_turns(turns);
  if (kind == ChatTemplateKind::plain) return plain_conversation(system, turns);
  std::string text = conversation_start(*this, system);
  for (size_t i = 0; i < turns.size(); i++) {
    // An earlier assistant turn is written exactly as an answer is.
    text += turns[i].role == "user"
                ? user_turn(kind, system, turns[i].content, i == 0, i + 1 == turns.size())
                : answer(turns[i].content);
  }
  return text;
}

std::string ChatTemplate::prompt(const std::string& system, const std::string& user) const {
  return prompt(system, std::vector<ChatTurn>{{"user", user}});
}

std::string ChatTemplate::answer(const std::string& text) const {
  switch (kind) {
    case ChatTemplateKind::chatml: return chatml_turn("assistant", text);
    case ChatTemplateKind::solar: return "### Assistant:\n" + text;
    case ChatTemplateKind::llama2: return " " + python_strip(text) + " </s>";
    case ChatTemplateKind::llama3:
    case ChatTemplateKind::llama3_1: return llama3_turn("assistant", text);
    case ChatTemplateKind::mistral: return text + "</s> ";
    case ChatTemplateKind::mistral_v2: return " " + text + "</s>";
    case ChatTemplateKind::mistral_v3: return " " + python_strip(text) + "</s>";
    case ChatTemplateKind::zephyr: return "<|assistant|>\n" + text + "</s>\n";
    case ChatTemplateKind::plain: return text;
  }
  fail("chat template: unknown kind ", static_cast<int>(kind));
}

// The llama2 and mistral families and plain have no generation prompt: the model continues right
// after [/INST].
std::string ChatTemplate::generation_prompt(const std::string& system,
                                            const std::vector<ChatTurn>& turns) const {
  switch (kind) {
    case ChatTemplateKind::chatml: return prompt(system, turns) + "<|im_start|>assistant\n";
    case ChatTemplateKind::solar: return prompt(system, turns) + "### Assistant:\n";
    case ChatTemplateKind::zephyr: return prompt(system, turns) + "<|assistant|>\n";
    case ChatTemplateKind::llama3:
    case ChatTemplateKind::llama3_1: return prompt(system, turns) + kLlama3AssistantHeader;
    case ChatTemplateKind::llama2:
    case ChatTemplateKind::mistral:
    case ChatTemplateKind::mistral_v2:
    case ChatTemplateKind::mistral_v3:
    case ChatTemplateKind::plain: return prompt(system, turns);
  }
  fail("chat template: unknown kind ", static_cast<int>(kind));
}

std::string ChatTemplate::generation_prompt(const std::string& system,
                                            const std::string& user) const {
  return generation_prompt(system, std::vector<ChatTurn>{{"user", user}});
}

// What a model writes when its turn is over, for stopping generation when the tokenizer's EOS is
// a different token: ChatML's <|im_end|>, Llama 3's <|eot_id|>, the </s> text of the Llama-family
// templates, or the next turn's header for SOLAR (which has no end-of-turn marker of its own).
std::vector<std::string> ChatTemplate::end_of_turn() const {
  switch (kind) {
    case ChatTemplateKind::chatml: return {"<|im_end|>"};
    case ChatTemplateKind::llama3:
    case ChatTemplateKind::llama3_1: return {"<|eot_id|>"};
    case ChatTemplateKind::solar: return {"### User:"};
    case ChatTemplateKind::llama2:
    case ChatTemplateKind::mistral:
    case ChatTemplateKind::mistral_v2:
    case ChatTemplateKind::mistral_v3: return {"</s>"};
    case ChatTemplateKind::zephyr: return {"</s>", "<|user|>"};
    case ChatTemplateKind::plain: return {};
  }
  fail("chat template: unknown kind ", static_cast<int>(kind));
}

std::string ChatTemplate::name() const { return known(kind).name; }

std::vector<std::string> chat_template_names() {
  std::vector<std::string> names;
  for (const KnownTemplate& known_template : kKnownTemplates) names.push_back(known_template.name);
  return names;
}

ChatTemplate chat_template_by_name(const std::string& name) {
  for (const KnownTemplate& known_template : kKnownTemplates) {
    if (name == known_template.name) return ChatTemplate{known_template.kind};
  }
  fail("unknown chat template '", name, "'; built-in templates: ", chat_template_name_list());
}

ChatTemplate detect_chat_template(const std::string& jinja_source) {
  // Exact comparison (surrounding whitespace aside): a space inside a string literal changes the
  // rendered text, so a near match is not the same template.
  const std::string source = python_strip(jinja_source);
  for (const KnownTemplate& known_template : kKnownTemplates) {
    if (known_template.jinja_source && source == python_strip(known_template.jinja_source)) {
      return ChatTemplate{known_template.kind};
    }
  }
  if (is_llama3_1_family(source)) return ChatTemplate{ChatTemplateKind::llama3_1};
  const bool llama3_markers = source.find("<|start_header_id|>") != std::string::npos;
  fail("the tokenizer's chat_template is not one cst knows (built-in templates: ", chat_template_name_list(),
       "); pass --chat_template NAME to choose one",
       llama3_markers ? " (it has Llama 3's turn markers: llama3 renders Meta-Llama-3-8B-Instruct's format, "
                        "llama3.1 that of Llama 3.1 and later, with the date header in the system turn)"
                      : "");
}

std::string parse_chat_template_date(const std::string& text) {
  if (text == "today") {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    std::array<char, 32> date{};
    std::strftime(date.data(), date.size(), "%d %b %Y", &local);  // the C locale's English months
    return date.data();
  }
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  auto digits = [&](size_t from, size_t count) {
    for (size_t i = from; i < from + count; i++)
      if (text[i] < '0' || text[i] > '9') return false;
    return true;
  };
  bool valid = text.size() == 11 && digits(0, 2) && text[2] == ' ' && text[6] == ' ' && digits(7, 4) &&
               text.substr(0, 2) != "00" && text.substr(0, 2) <= "31";
  valid = valid && std::find(std::begin(kMonths), std::end(kMonths), text.substr(3, 3)) != std::end(kMonths);
  if (!valid)
    fail("--chat_template_date: '", text, "' is not a date like \"", kLlama31DefaultDate,
         "\" (two-digit day, English month abbreviation, four-digit year) or today");
  return text;
}

std::string chat_template_name_list() {
  std::string names;
  for (const std::string& name : chat_template_names()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace cst
