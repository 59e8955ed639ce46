// Chat templates: the prompt and answer strings trl's DPO recipe builds with
// tokenizer.apply_chat_template, for the model families cst trains. Each kind reproduces one
// published jinja template exactly (tests/fixtures/tokenizer/chat_templates/<name>.jinja):
//   chatml   teknium/OpenHermes-2.5-Mistral-7B   <|im_start|>role\n...<|im_end|>\n
//   solar    upstage/SOLAR-10.7B-Instruct-v1.0   ### System:\n...\n\n### User:\n...\n\n### Assistant:\n
//            (an empty system prompt is left out, as the template does)
//   llama2   meta-llama/Llama-2-7b-chat-hf        <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]
//   mistral  mistralai/Mistral-7B-Instruct-v0.1   <s>[INST] ... [/INST]; no system role, so the
//            system prompt is folded into the user turn as system + "\n\n" + user (the seed's rule)
//   mistral_v2  mistralai/Mistral-7B-Instruct-v0.2 (its template with a system role)
//            <s> [INST] system\n\nuser [/INST]; answer " " + text + "</s>". The system prompt opens
//            the first user turn, even when empty.
//   mistral_v3  Mistral's v3 template with tools (published for Mistral-Large-Instruct-2407 and the
//            v3-tokenizer models)  <s>[INST] system\n\nuser[/INST]; answer " " + text.strip() + "</s>".
//            The template writes the system prompt into the last user turn only, so it renders a
//            [system, user, assistant] conversation without it; prompt() is the [system, user]
//            rendering and answer() the text the assistant turn adds after its user turn.
//   zephyr   HuggingFaceH4/zephyr-7b-beta         <|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n
//   plain    no template: prompt = system + "\n\n" + user (just user when system is empty),
//            answer appended as is.
// llama2, the mistral family and zephyr write the Llama special tokens <s> and </s> as text, as
// their templates do with those models' bos/eos. llama2 and the mistral family cannot render a lone
// assistant turn (their templates require a user turn first); their answer() is the text that an
// assistant turn adds after the prompt.
#pragma once
#include <string>
#include <vector>

namespace cst {

enum class ChatTemplateKind { chatml, solar, llama2, mistral, mistral_v2, mistral_v3, zephyr, plain };

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::chatml;
  // The prompt text as trl's recipe builds it: apply_chat_template([system, user],
  // add_generation_prompt=False, tokenize=False).
  std::string prompt(const std::string& system, const std::string& user) const;
  // An answer turn: apply_chat_template([assistant: text], tokenize=False).
  std::string answer(const std::string& text) const;
  // For generation: apply_chat_template([system, user], add_generation_prompt=True).
  std::string generation_prompt(const std::string& system, const std::string& user) const;
  // Texts that end an assistant turn (e.g. "<|im_end|>") besides EOS.
  std::vector<std::string> end_of_turn() const;
  std::string name() const;
};

ChatTemplate chat_template_by_name(const std::string& name);  // error lists the names
// Recognises a tokenizer_config.json chat_template; an unrecognised one is an error that lists the
// built-in names and suggests --chat_template NAME.
ChatTemplate detect_chat_template(const std::string& jinja_source);
std::vector<std::string> chat_template_names();

}  // namespace cst
