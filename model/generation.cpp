#include "model/generation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/elementwise.h"
#include "model/weights.h"

namespace cst {

int32_t sample_token(std::span<const float> logits, const GenerationOptions& options, double draw) {
  if (options.temperature <= 0.0f)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Candidates in order of decreasing logit; softmax over them at the temperature.
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  size_t keep = options.top_k > 0 ? std::min(order.size(), size_t(options.top_k)) : order.size();
  std::partial_sort(order.begin(), order.begin() + long(keep), order.end(),
                    [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); });
  order.resize(keep);
  const double max_logit = logits[size_t(order[0])];
  std::vector<double> probabilities(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    probabilities[i] = std::exp((logits[size_t(order[i])] - max_logit) / options.temperature);
    total += probabilities[i];
  }
  if (options.top_p < 1.0f) {  // nucleus: the shortest prefix reaching top_p of the mass
    double mass = 0;
    size_t cut = 0;
    while (cut < keep && mass < options.top_p * total) mass += probabilities[cut++];
    keep = std::max<size_t>(cut, 1);
    total = std::accumulate(probabilities.begin(), probabilities.begin() + long(keep), 0.0);
  }
  double target = draw * total;
  for (size_t i = 0; i < keep; ++i) {
    target -= probabilities[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(Transformer& transformer, const std::vector<int32_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  return generate_batch(transformer, {prompt}, options, [&](size_t, int32_t token) {
    if (on_token) on_token(token);
  })[0];
}

std::vector<std::vector<int32_t>> generate_batch(Transformer& transformer,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerationOptions& options,
                                                 const std::function<void(size_t, int32_t)>& on_token) {
  if (prompts.empty()) return {};
  size_t longest = 0;
  for (const std::vector<int32_t>& prompt : prompts) {
    if (prompt.empty()) fail("generation needs a non-empty prompt");
    longest = std::max(longest, prompt.size());
  }
  const ModelConfig& config = transformer.config();
  const int64_t capacity = int64_t(longest) + std::max(options.max_new_tokens, 0);
  if (config.max_position_embeddings > 0 && capacity > config.max_position_embeddings)
    fail("prompt (", longest, " tokens) + max_new_tokens (", options.max_new_tokens,
         ") exceeds the model's ", config.max_position_embeddings, " positions");
  KvCache cache(config, transformer.device(), transformer.weights_dtype(), int64_t(prompts.size()), capacity);
  std::vector<std::vector<int32_t>> generated(prompts.size());
  // The sequences still generating, in the order of the logits rows the last decode returned.
  std::vector<DecodePiece> pieces;
  for (size_t i = 0; i < prompts.size(); ++i) pieces.push_back({int64_t(i), prompts[i]});
  const int64_t vocab = config.vocab_size;
  for (int step = 0; step < options.max_new_tokens && !pieces.empty(); ++step) {
    const std::vector<float> logits = transformer.decode(pieces, cache, options.adapters_enabled);
    const double draw = counter_uniform(options.seed, 0, uint64_t(step));  // every prompt's, as alone
    std::vector<DecodePiece> unfinished;
    for (size_t row = 0; row < pieces.size(); ++row) {
      const size_t sequence = size_t(pieces[row].sequence);
      const int32_t token = sample_token(std::span<const float>(logits).subspan(row * size_t(vocab), size_t(vocab)),
                                         options, draw);
      generated[sequence].push_back(token);
      if (on_token) on_token(sequence, token);
      const bool stopped = std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end();
      // The span stays valid until this sequence's next token is pushed, after the next decode.
      if (!stopped) unfinished.push_back({int64_t(sequence), std::span<const int32_t>(&generated[sequence].back(), 1)});
    }
    pieces = std::move(unfinished);
  }
  return generated;
}

}  // namespace cst
