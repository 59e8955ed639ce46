// Answering one request as a chat model: render the generation prompt with the chat template
// (BOS first, as in training), generate until EOS or an end-of-turn marker, decode the answer.
// Shared by cst_generate and the demo.
#pragma once
#include <functional>
#include <string>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/generation.h"

namespace cst {

struct Response {
  std::string text;   // the answer, cut at the first end-of-turn marker
  int64_t tokens = 0;
  double seconds = 0;
};

// The stop tokens of a chat model: EOS and every end-of-turn marker that is a single token.
std::vector<int32_t> chat_stop_tokens(const Tokenizer& tokenizer, const ChatTemplate& chat_template);

// on_text receives the answer's text as it is decoded (streaming); it may be empty. turns: a
// conversation ending with the user turn to answer (ChatTemplate::generation_prompt).
Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const std::string& system, const std::vector<ChatTurn>& turns, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text = {});
// One user turn.
Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const std::string& system, const std::string& prompt, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text = {});

}  // namespace cst
