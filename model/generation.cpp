#include "model/generation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/elementwise.h"
#include "model/weights.h"

namespace cst {

int32_t sample_token(const std::vector<float>& logits, const GenerationOptions& options, double draw) {
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
  if (prompt.empty()) fail("generation needs a non-empty prompt");
  const ModelConfig& config = transformer.config();
  const int64_t capacity = int64_t(prompt.size()) + options.max_new_tokens;
  if (config.max_position_embeddings > 0 && capacity > config.max_position_embeddings)
    fail("prompt (", prompt.size(), " tokens) + max_new_tokens (", options.max_new_tokens,
         ") exceeds the model's ", config.max_position_embeddings, " positions");
  KvCache cache(config, transformer.device(), transformer.weights_dtype(), capacity);
  std::vector<int32_t> generated;
  std::vector<float> logits = transformer.decode(prompt, cache, options.adapters_enabled);
  for (int step = 0; step < options.max_new_tokens; ++step) {
    const int32_t token = sample_token(logits, options, counter_uniform(options.seed, 0, uint64_t(step)));
    generated.push_back(token);
    if (on_token) on_token(token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) break;
    if (step + 1 < options.max_new_tokens) logits = transformer.decode(std::span<const int32_t>(&token, 1), cache, options.adapters_enabled);
  }
  return generated;
}

}  // namespace cst
