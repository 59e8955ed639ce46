// Tests of the fused LM head + log-softmax against a naive float64 log-softmax over full logits.
// Pattern and tolerances: tests/op_reference.h.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/logprobs.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

using test::f32_tensor;
using test::i32_tensor;
using test::kGradientTolerance;
using test::numeric_gradient;
using test::relative_error;
using test::Rng;
using test::to_double;
using test::to_vector;

struct ReferenceLogprobs {
  std::vector<double> logps, lse, logit_sums;
};

ReferenceLogprobs reference_logprobs(const std::vector<double>& hidden,
                                     const std::vector<double>& lm_head,
                                     const std::vector<int32_t>& labels, int64_t vocab,
                                     int64_t channels) {
  size_t tokens = labels.size();
  ReferenceLogprobs result{std::vector<double>(tokens), std::vector<double>(tokens),
                           std::vector<double>(tokens)};
  for (size_t n = 0; n < tokens; ++n) {
    if (labels[n] < 0) continue;
    std::vector<double> logits(static_cast<size_t>(vocab));
    for (int64_t v = 0; v < vocab; ++v)
      for (int64_t c = 0; c < channels; ++c)
        logits[size_t(v)] +=
            lm_head[size_t(v * channels + c)] * hidden[n * size_t(channels) + size_t(c)];
    double normaliser = 0, sum = 0;
    for (double z : logits) {
      normaliser += std::exp(z);
      sum += z;
    }
    result.lse[n] = std::log(normaliser);
    result.logps[n] = logits[size_t(labels[n])] - result.lse[n];
    result.logit_sums[n] = sum;
  }
  return result;
}

// Restores the default chunk size however the test ends.
struct ChunkTokensOverride {
  explicit ChunkTokensOverride(int64_t tokens) { set_logprobs_chunk_tokens(tokens); }
  ~ChunkTokensOverride() { set_logprobs_chunk_tokens(0); }
};

TEST(OpsLogprobs, ChunksMatchFullLogSoftmaxAndBackwardMatchesFiniteDifferences) {
  const int64_t N = 40, C = 12, V = 37;  // V prime: a multiple of nothing
  Rng rng(200);
  std::vector<float> hidden_values = rng.floats(N * C, -2, 2), head_values = rng.floats(V * C);
  std::vector<int32_t> labels(N);
  for (int64_t n = 0; n < N; ++n)
    labels[size_t(n)] = n % 3 == 0 ? -100 : int32_t(rng.integer(0, V - 1));
  labels[1] = -1;
  labels[N - 1] = V - 1;
  std::vector<float> dlogp_values = rng.floats(N);
  OwnedTensor hidden = f32_tensor({N, C}, hidden_values), lm_head = f32_tensor({V, C}, head_values);
  OwnedTensor label_tensor = i32_tensor({N}, labels), dlogps = f32_tensor({N}, dlogp_values);
  ReferenceLogprobs expected =
      reference_logprobs(to_double(hidden_values), to_double(head_values), labels, V, C);

  // 26 labelled tokens in chunks of 4 (the last one partial), then in a single chunk.
  for (int64_t chunk_tokens : {4, 0}) {
    SCOPED_TRACE(testing::Message() << "chunk tokens " << chunk_tokens);
    ChunkTokensOverride chunk(chunk_tokens);
    Arena scratch(Device::cpu, 4096);
    OwnedTensor logps({N}, DType::f32, Device::cpu), lse({N}, DType::f32, Device::cpu),
        logit_sums({N}, DType::f32, Device::cpu);
    logprobs_forward(logps, lse, logit_sums, hidden, lm_head, label_tensor, scratch);
    // Logits are f32 dot products of C = 12 terms, lse a sum of 37 exponentials: ~1e-7 relative.
    EXPECT_LT(relative_error(to_vector(logps), expected.logps), 1e-5);
    EXPECT_LT(relative_error(to_vector(lse), expected.lse), 1e-5);
    EXPECT_LT(relative_error(to_vector(logit_sums), expected.logit_sums), 1e-5);
    for (int64_t n = 0; n < N; ++n)
      if (labels[size_t(n)] < 0) {
        EXPECT_EQ(logps->f32()[n], 0.0f);
        EXPECT_EQ(lse->f32()[n], 0.0f);
        EXPECT_EQ(logit_sums->f32()[n], 0.0f);
      }

    OwnedTensor dhidden({N, C}, DType::f32, Device::cpu);
    for (int64_t i = 0; i < N * C; ++i) dhidden->f32()[i] = 1e6f;  // must be overwritten
    scratch.reset();
    logprobs_backward(dhidden, dlogps, hidden, lm_head, label_tensor, lse, scratch);
    // loss = sum_n dlogp_n logp_n: the backward's input plays the role of R.
    auto loss = [&](const std::vector<double>& point) {
      std::vector<double> logp =
          reference_logprobs(point, to_double(head_values), labels, V, C).logps;
      return test::weighted_sum(logp, dlogp_values);
    };
    std::vector<double> numeric = numeric_gradient(loss, to_double(hidden_values));
    EXPECT_LT(relative_error(to_vector(dhidden), numeric), kGradientTolerance);
    for (int64_t n = 0; n < N; ++n) {
      if (labels[size_t(n)] >= 0) continue;
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dhidden->f32()[n * C + c], 0.0f);
    }
  }
}

TEST(OpsLogprobs, DefaultChunkHoldsAbout64MiBOfLogits) {
  EXPECT_EQ(logprobs_chunk_tokens(32000), (int64_t(64) << 20) / (4 * 32000));
  EXPECT_EQ(logprobs_chunk_tokens(int64_t(1) << 30), 1);
}

TEST(OpsLogprobs, LabelsPastTheVocabularyAreErrors) {
  OwnedTensor hidden({3, 4}, DType::f32, Device::cpu), lm_head({5, 4}, DType::f32, Device::cpu);
  OwnedTensor labels = i32_tensor({3}, {0, 5, -100});
  OwnedTensor logps({3}, DType::f32, Device::cpu), lse({3}, DType::f32, Device::cpu),
      sums({3}, DType::f32, Device::cpu);
  Arena scratch(Device::cpu, 4096);
  EXPECT_THROW(logprobs_forward(logps, lse, sums, hidden, lm_head, labels, scratch), Error);
  OwnedTensor wrong_width({5, 3}, DType::f32, Device::cpu);
  OwnedTensor good_labels = i32_tensor({3}, {0, 4, -100});
  EXPECT_THROW(logprobs_forward(logps, lse, sums, hidden, wrong_width, good_labels, scratch),
               Error);
}

}  // namespace
}  // namespace cst
