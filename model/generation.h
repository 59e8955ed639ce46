// Text generation with a KV cache: prefill the prompt once, then one token per step.
//
// Sampling from the last logits z (V):
//   greedy (temperature 0): argmax z
//   otherwise p = softmax(z / temperature), then
//     top_k > 0: keep the k most likely tokens
//     top_p < 1: keep the smallest set of most likely tokens whose probability reaches top_p
//   and draw from the renormalised rest with a seeded generator (deterministic for a seed).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/transformer.h"

namespace cst {

struct GenerationOptions {
  int max_new_tokens = 256;
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
  bool adapters_enabled = true;
  std::vector<int32_t> stop_tokens;  // generation ends after producing one of these
};

// Picks the next token from logits as the options say; `draw` is a uniform number in [0, 1).
int32_t sample_token(std::span<const float> logits, const GenerationOptions& options, double draw);

// Returns the new tokens (a stop token, when reached, is included). on_token is called with each
// new token as soon as it exists (streaming); it may be empty.
std::vector<int32_t> generate(Transformer& transformer, const std::vector<int32_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int32_t)>& on_token = {});

// Several prompts at once: one prefill of all of them, then each step runs one token of every
// unfinished sequence in one forward (a sequence leaves the batch when it stops). Each prompt gets
// the tokens generate() gives it alone: the same draws, so the same tokens up to the rounding
// differences of batched matrix products. on_token(prompt index, token) may be empty.
std::vector<std::vector<int32_t>> generate_batch(Transformer& transformer,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerationOptions& options,
                                                 const std::function<void(size_t, int32_t)>& on_token = {});

}  // namespace cst
