#include "train/respond.h"

#include <algorithm>
#include <chrono>

namespace cst {

std::vector<int32_t> chat_stop_tokens(const Tokenizer& tokenizer, const ChatTemplate& chat_template) {
  std::vector<int32_t> stops = {tokenizer.eos_id()};
  for (const std::string& marker : chat_template.end_of_turn())
    if (auto id = tokenizer.token_id(marker); id && std::find(stops.begin(), stops.end(), *id) == stops.end())
      stops.push_back(*id);
  return stops;
}

static std::string cut_at_end_of_turn(std::string text, const ChatTemplate& chat_template) {
  for (const std::string& marker : chat_template.end_of_turn())
    if (size_t at = text.find(marker); at != std::string::npos) text.resize(at);
  return text;
}

Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const std::string& system, const std::vector<ChatTurn>& turns, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text) {
  std::vector<int32_t> prompt_ids = tokenizer.encode(chat_template.generation_prompt(system, turns));
  if (tokenizer.bos_id() >= 0 && (prompt_ids.empty() || prompt_ids[0] != tokenizer.bos_id()))
    prompt_ids.insert(prompt_ids.begin(), tokenizer.bos_id());  // as trl's training prompts
  if (options.stop_tokens.empty()) options.stop_tokens = chat_stop_tokens(tokenizer, chat_template);
  StreamingDecoder decoder(tokenizer, true);
  const auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> answer = generate(transformer, prompt_ids, options, [&](int32_t token) {
    const std::string piece = decoder.push(token);
    if (on_text && !piece.empty()) on_text(piece);
  });
  if (on_text) {
    const std::string rest = decoder.finish();
    if (!rest.empty()) on_text(rest);
  }
  Response response;
  response.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  response.tokens = int64_t(answer.size());
  response.text = cut_at_end_of_turn(tokenizer.decode(answer, true), chat_template);
  return response;
}

Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const std::string& system, const std::string& prompt, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text) {
  return respond(transformer, tokenizer, chat_template, system, std::vector<ChatTurn>{{"user", prompt}}, options, on_text);
}

}  // namespace cst
