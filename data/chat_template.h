// Chat templates: the prompt and answer strings trl's DPO recipe builds with
// tokenizer.apply_chat_template, for the model families cst trains. Each kind reproduces one
// published jinja template exactly (tests/fixtures/tokenizer/chat_templates/<name>.jinja), for a
// system prompt and any number of earlier user/assistant turns before the last user turn:
//   chatml   teknium/OpenHermes-2.5-Mistral-7B   <|im_start|>role\n...<|im_end|>\n
//   solar    upstage/SOLAR-10.7B-Instruct-v1.0   ### System:\n...\n\n### User:\n...\n\n### Assistant:\n
//            (an empty system prompt is left out, as the template does)
//   llama2   meta-llama/Llama-2-7b-chat-hf        <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]; the
//            system block opens the first user turn, and every turn is stripped of surrounding whitespace
//   mistral  mistralai/Mistral-7B-Instruct-v0.1   <s>[INST] ... [/INST]; no system role, so the
//            system prompt is folded into the first user turn as system + "\n\n" + user (the seed's rule)
//   mistral_v2  mistralai/Mistral-7B-Instruct-v0.2 (its template with a system role)
//            <s> [INST] system\n\nuser [/INST]; answer " " + text + "</s>". The system prompt opens
//            the first user turn, even when empty.
//   mistral_v3  Mistral's v3 template with tools (published for Mistral-Large-Instruct-2407 and the
//            v3-tokenizer models)  <s>[INST] system\n\nuser[/INST]; answer " " + text.strip() + "</s>".
//            The template writes the system prompt into the last user turn only, so it renders a
//            conversation that ends with an assistant turn without it; prompt() is the rendering that
//            ends with the last user turn (system prompt included) and answer() the text the assistant
//            turn adds after it.
//   zephyr   HuggingFaceH4/zephyr-7b-beta         <|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n
//   llama3   meta-llama/Meta-Llama-3-8B-Instruct  <|begin_of_text|> then per turn
//            <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>, every turn's content stripped
//            of surrounding whitespace; generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n.
//   llama3.1 meta-llama/Llama-3.1-8B-Instruct, Llama-3.2-*-Instruct, Llama-3.3-70B-Instruct (without
//            tools): llama3's turns, with a date header opening the system turn:
//            <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:
//            December 2023\nToday Date: 26 Jul 2024\n\n{system, stripped}<|eot_id|>...
//            The date is today_date. "26 Jul 2024" is what the 3.1 templates always write, and what
//            the 3.2 ones write under a transformers without strftime_now (4.42.4, the seed's);
//            with it they write the day of rendering (today_date "today").
//   plain    no template: the system prompt (when not empty) and every turn's text joined by "\n\n"
//            (one turn: system + "\n\n" + user), the answer appended as is.
// llama2, the mistral family and zephyr write the Llama special tokens <s> and </s> as text, as
// their templates do with those models' bos/eos; llama3 writes its bos_token <|begin_of_text|>.
// llama2 and the mistral family cannot render a lone assistant turn (their templates require a
// user turn first), and llama3's puts BOS before whichever turn comes first; their answer() is the
// text that an assistant turn adds after the prompt. For every kind but mistral_v3 (and plain, which has no
// template), prompt(system, turns) + answer(text) is the rendering of the whole conversation.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace cst {

// One turn of a conversation before the answer: role "user" or "assistant".
struct ChatTurn {
  std::string role, content;
  bool operator==(const ChatTurn&) const = default;
};

// The role of turn i of a prompt: turns alternate user, assistant, user, ... and a prompt ends with
// a user turn, the one the answer replies to.
const char* expected_turn_role(size_t turn_index);

enum class ChatTemplateKind { chatml, solar, llama2, llama3, llama3_1, mistral, mistral_v2, mistral_v3, zephyr, plain };

// The date the Llama 3.1 templates fall back to when the renderer gives them none.
inline constexpr const char* kLlama31DefaultDate = "26 Jul 2024";

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::chatml;
  // llama3.1's "Today Date" header, as strftime "%d %b %Y" writes it ("03 Dec 2026").
  std::string today_date = kLlama31DefaultDate;
  // The prompt text as trl's recipe builds it: apply_chat_template([system] + turns,
  // add_generation_prompt=False, tokenize=False). turns must alternate user/assistant, starting
  // and ending with a user turn; anything else is an error naming the turn.
  std::string prompt(const std::string& system, const std::vector<ChatTurn>& turns) const;
  // The same for one user turn: apply_chat_template([system, user], ...).
  std::string prompt(const std::string& system, const std::string& user) const;
  // An answer turn: apply_chat_template([assistant: text], tokenize=False).
  std::string answer(const std::string& text) const;
  // For generation: apply_chat_template([system] + turns, add_generation_prompt=True).
  std::string generation_prompt(const std::string& system, const std::vector<ChatTurn>& turns) const;
  std::string generation_prompt(const std::string& system, const std::string& user) const;
  // Texts that end an assistant turn (e.g. "<|im_end|>") besides EOS.
  std::vector<std::string> end_of_turn() const;
  std::string name() const;
};

ChatTemplate chat_template_by_name(const std::string& name);  // error lists the names
// Recognises a tokenizer_config.json chat_template; an unrecognised one is an error that lists the
// built-in names and suggests --chat_template NAME.
ChatTemplate detect_chat_template(const std::string& jinja_source);
// A --chat_template_date value as today_date: "DD Mon YYYY" (English month abbreviation, as
// strftime "%d %b %Y" writes it) is checked and kept; "today" is the local date in that form.
std::string parse_chat_template_date(const std::string& text);
std::vector<std::string> chat_template_names();
// The same names joined by ", ", for messages.
std::string chat_template_name_list();

}  // namespace cst
