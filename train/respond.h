// Answering requests as a chat model: render the generation prompt with the chat template (BOS
// first, as in training), generate until EOS or an end-of-turn marker, decode the answer.
// Shared by cst_generate, cst_eval and the demo.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/generation_prompts.h"
#include "data/tokenizer.h"
#include "model/generation.h"

namespace cst {

struct Response {
  std::string text;   // the answer, cut at the first end-of-turn marker
  int64_t tokens = 0;
  double seconds = 0;  // respond_batch: the whole batch's time
};

// The stop tokens of a chat model: the tokenizer's EOS, every EOS id of the model's config.json
// (Llama 3.1 lists several, and transformers' generate() stops at each) and every end-of-turn
// marker that is a single token; each once.
std::vector<int32_t> chat_stop_tokens(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                      const std::vector<int>& config_eos_ids);

// One request; on_text receives the answer's text as it is decoded (streaming); it may be empty.
Response respond(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                 const GenerationRequest& request, GenerationOptions options,
                 const std::function<void(const std::string&)>& on_text = {});

// Several requests generated together (generate_batch): each gets the answer respond() gives it, up
// to the rounding of batched matrix products.
std::vector<Response> respond_batch(Transformer& transformer, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template, const std::vector<GenerationRequest>& requests,
                                    GenerationOptions options);

// All requests, batch_size at a time through respond_batch; on_batch gets each batch and its
// responses as soon as they are generated.
void respond_in_batches(Transformer& transformer, const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                        const std::vector<GenerationRequest>& requests, const GenerationOptions& options,
                        int batch_size,
                        const std::function<void(const std::vector<GenerationRequest>& batch,
                                                 const std::vector<Response>& responses)>& on_batch);

}  // namespace cst
