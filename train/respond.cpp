#include "train/respond.h"

#include <algorithm>
#include <chrono>

#include "kernels/error.h"

namespace cst {

std::vector<int32_t> chat_stop_tokens(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                      const std::vector<int>& config_eos_ids) {
  std::vector<int32_t> stops;
  auto add = [&](int32_t id) {
    if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
  };
  add(tokenizer.eos_id());
  for (int id : config_eos_ids) add(id);
  for (const std::string& marker : chat_template.end_of_turn())
    if (auto id = tokenizer.token_id(marker)) add(*id);
  return stops;
}

namespace {

std::vector<int32_t> prompt_ids(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                const GenerationRequest& request) {
  std::vector<int32_t> ids = tokenizer.encode(chat_template.generation_prompt(request.system, request.turns));
  if (tokenizer.bos_id() >= 0 && (ids.empty() || ids[0] != tokenizer.bos_id()))
    ids.insert(ids.begin(), tokenizer.bos_id());  // as trl's training prompts
  return ids;
}

Response response_of(const std::vector<int32_t>& answer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                     std::chrono::steady_clock::time_point start) {
  Response response;
  response.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  response.tokens = int64_t(answer.size());
  response.text = tokenizer.decode(answer, true);
  for (const std::string& marker : chat_template.end_of_turn())
    if (size_t at = response.text.find(marker); at != std::string::npos) response.text.resize(at);
  return response;
}

}  // namespace

Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const GenerationRequest& request, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text) {
  if (options.stop_tokens.empty())
    options.stop_tokens = chat_stop_tokens(tokenizer, chat_template, transformer.config().eos_token_ids);
  StreamingDecoder decoder(tokenizer, true);
  const auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> answer =
      generate(transformer, prompt_ids(tokenizer, chat_template, request), options, [&](int32_t token) {
        const std::string piece = decoder.push(token);
        if (on_text && !piece.empty()) on_text(piece);
      });
  if (on_text) {
    const std::string rest = decoder.finish();
    if (!rest.empty()) on_text(rest);
  }
  return response_of(answer, tokenizer, chat_template, start);
}

std::vector<Response> respond_batch(Transformer& transformer, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template, const std::vector<GenerationRequest>& requests,
                                    GenerationOptions options) {
  if (options.stop_tokens.empty())
    options.stop_tokens = chat_stop_tokens(tokenizer, chat_template, transformer.config().eos_token_ids);
  std::vector<std::vector<int32_t>> prompts;
  for (const GenerationRequest& request : requests) prompts.push_back(prompt_ids(tokenizer, chat_template, request));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::vector<int32_t>> answers = generate_batch(transformer, prompts, options);
  std::vector<Response> responses;
  for (const std::vector<int32_t>& answer : answers)
    responses.push_back(response_of(answer, tokenizer, chat_template, start));
  return responses;
}

void respond_in_batches(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                        const std::vector<GenerationRequest>& requests, const GenerationOptions& options,
                        int batch_size,
                        const std::function<void(const std::vector<GenerationRequest>& batch,
                                                 const std::vector<Response>& responses)>& on_batch) {
  if (batch_size < 1) fail("batch_size must be >= 1, got ", batch_size);
  for (size_t first = 0; first < requests.size(); first += size_t(batch_size)) {
    const size_t end = std::min(requests.size(), first + size_t(batch_size));
    const std::vector<GenerationRequest> batch(requests.begin() + int64_t(first), requests.begin() + int64_t(end));
    on_batch(batch, respond_batch(transformer, tokenizer, chat_template, batch, options));
  }
}

}  // namespace cst
