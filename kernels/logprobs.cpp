// CPU reference of the fused LM head + log-softmax at the label.
//
// Only labelled tokens need logits, so their hidden rows are gathered into a contiguous block,
// chunk by chunk; one sgemm per chunk gives the chunk's logits (chunk x V), and a row pass turns
// them into max, lse, the label's log-prob and the logit sum. The backward recomputes the same
// logits, turns them into dz in place, and one more sgemm gives the chunk's dhidden rows. The row
// passes use the vectorised exp of kernels/vector_math.h: they take tokens x V exponentials.
#include "kernels/logprobs.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/op_checks.h"
#include "kernels/vector_math.h"

namespace cst {

namespace {

std::atomic<int64_t> chunk_tokens_override{0};

// hidden (N, C), lm_head (V, C), labels (N) i32, and per-token f32 values (N).
void logprobs_check(const char* op, const Tensor& hidden, const Tensor& lm_head,
                    const Tensor& labels,
                    std::initializer_list<std::pair<const Tensor*, const char*>> per_token_values) {
  check_rank(hidden, 2, op, "hidden");
  check_rank(lm_head, 2, op, "lm_head");
  int64_t tokens = hidden.shape[0], channels = hidden.shape[1];
  check_dims(lm_head, {lm_head.shape[0], channels}, op, "lm_head");
  check_dims(labels, {tokens}, op, "labels");
  check_dtype(labels, DType::i32, op, "labels");
  for (auto [t, name] : per_token_values) {
    check_dims(*t, {tokens}, op, name);
    check_dtype(*t, DType::f32, op, name);
  }
}

// The tokens that have a label, in order. A label past the vocabulary is an error; any negative
// label means "no label" (prompt or padding, -100 in HF).
std::vector<int64_t> labelled_tokens(const char* op, const Tensor& labels, int64_t vocab) {
  const int32_t* label_data = labels.i32();
  std::vector<int64_t> tokens;
  for (int64_t n = 0; n < labels.shape[0]; ++n) {
    if (label_data[n] >= vocab)
      fail(op, ": labels[", n, "] = ", label_data[n], " is outside the vocabulary [0, ", vocab,
           ")");
    if (label_data[n] >= 0) tokens.push_back(n);
  }
  return tokens;
}

// Walks the labelled tokens chunk by chunk. For each chunk it computes
//   logits (rows, V) = hidden[tokens] @ lm_head^T
// by copying the hidden rows into a contiguous block (so one sgemm covers the chunk), then calls
// body(chunk_tokens, logits, block). The block (rows, C) is free for the body to reuse.
template <class Body>
void for_each_logit_chunk(const Tensor& hidden, const Tensor& lm_head,
                          const std::vector<int64_t>& tokens, Arena& scratch, Body body) {
  int64_t count = int64_t(tokens.size()), vocab = lm_head.shape[0], channels = hidden.shape[1];
  if (count == 0) return;
  int64_t chunk = std::min(logprobs_chunk_tokens(vocab), count);
  Tensor block = scratch.alloc({chunk, channels}, DType::f32);
  Tensor logits = scratch.alloc({chunk, vocab}, DType::f32);
  const float* hidden_data = hidden.f32();
  float* block_data = block.f32();
  for (int64_t begin = 0; begin < count; begin += chunk) {
    int64_t rows = std::min(chunk, count - begin);
    const int64_t* chunk_tokens = tokens.data() + begin;
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(block_data + r * channels, hidden_data + chunk_tokens[r] * channels,
                  sizeof(float) * size_t(channels));
    matmul(logits.rows(0, rows), block.rows(0, rows), lm_head, false, true);
    body(chunk_tokens, logits.rows(0, rows), block.rows(0, rows));
  }
}

void check_scratch(const char* op, const Arena& scratch, Device device) {
  if (scratch.device() != device)
    fail(op, ": scratch arena is on ", device_name(scratch.device()), ", the tensors on ",
         device_name(device));
}

// One row of logits: log sum_v exp(z_v), shifted by the max so that exp never overflows, and
// the plain sum of the logits. omp simd lets the sums split across vector lanes, a reordering
// the compiler may not make on its own; the lanes accumulate in double.
struct RowSummary {
  float lse;
  double logit_sum;
};

CST_WIDE_VECTORS RowSummary summarize_row(const float* z, int64_t count) {
  float max_logit = -INFINITY;
#pragma omp simd reduction(max : max_logit)
  for (int64_t v = 0; v < count; ++v) max_logit = vector_max(max_logit, z[v]);
  double exp_sum = 0, logit_sum = 0;
#pragma omp simd reduction(+ : exp_sum, logit_sum)
  for (int64_t v = 0; v < count; ++v) {
    exp_sum += vector_exp(z[v] - max_logit);
    logit_sum += z[v];
  }
  return {max_logit + float(std::log(exp_sum)), logit_sum};
}

// dz_v = -dlogp softmax_v = -dlogp exp(z_v - lse), written over the row of logits (the label's
// +dlogp is the caller's).
CST_WIDE_VECTORS void softmax_gradient_row(float* z, int64_t count, float dlogp, float lse) {
#pragma omp simd
  for (int64_t v = 0; v < count; ++v) z[v] = -dlogp * vector_exp(z[v] - lse);
}

}  // namespace

void set_logprobs_chunk_tokens(int64_t tokens) {
  chunk_tokens_override = std::max<int64_t>(0, tokens);
}

int64_t logprobs_chunk_tokens(int64_t vocab_size) {
  if (chunk_tokens_override > 0) return chunk_tokens_override;
  constexpr int64_t kChunkBytes = int64_t(64) << 20;
  int64_t bytes_per_token = int64_t(sizeof(float)) * std::max<int64_t>(1, vocab_size);
  return std::max<int64_t>(1, kChunkBytes / bytes_per_token);
}

void logprobs_forward(const Tensor& logps, const Tensor& lse, const Tensor& logit_sums,
                      const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                      Arena& scratch) {
  const char* op = "logprobs_forward";
  Device device = common_device(op, logps, lse, logit_sums, hidden, lm_head, labels);
  logprobs_check(op, hidden, lm_head, labels,
                 {{&logps, "logps"}, {&lse, "lse"}, {&logit_sums, "logit_sums"}});
  check_scratch(op, scratch, device);
  if (device == Device::cuda)
    return CST_ON_CUDA(
        cuda::logprobs_forward(logps, lse, logit_sums, hidden, lm_head, labels, scratch));
  check_f32(op, {{&hidden, "hidden"}, {&lm_head, "lm_head"}});

  int64_t vocab = lm_head.shape[0];
  std::vector<int64_t> tokens = labelled_tokens(op, labels, vocab);
  fill_zero(logps);
  fill_zero(lse);
  fill_zero(logit_sums);
  const int32_t* label_data = labels.i32();
  float* logp_data = logps.f32();
  float* lse_data = lse.f32();
  float* logit_sum_data = logit_sums.f32();
  auto score_chunk = [&](const int64_t* chunk_tokens, const Tensor& logits, const Tensor&) {
    const float* logit_data = logits.f32();
#pragma omp parallel for
    for (int64_t r = 0; r < logits.shape[0]; ++r) {
      const float* z = logit_data + r * vocab;
      int64_t n = chunk_tokens[r];
      RowSummary row = summarize_row(z, vocab);
      lse_data[n] = row.lse;
      logp_data[n] = z[label_data[n]] - row.lse;
      logit_sum_data[n] = float(row.logit_sum);
    }
  };
  for_each_logit_chunk(hidden, lm_head, tokens, scratch, score_chunk);
}

void logprobs_backward(const Tensor& dhidden, const Tensor& dlogps, const Tensor& hidden,
                       const Tensor& lm_head, const Tensor& labels, const Tensor& lse,
                       Arena& scratch) {
  const char* op = "logprobs_backward";
  Device device = common_device(op, dhidden, dlogps, hidden, lm_head, labels, lse);
  logprobs_check(op, hidden, lm_head, labels, {{&dlogps, "dlogps"}, {&lse, "lse"}});
  check_dims(dhidden, {hidden.shape[0], hidden.shape[1]}, op, "dhidden");
  check_scratch(op, scratch, device);
  if (device == Device::cuda)
    return CST_ON_CUDA(
        cuda::logprobs_backward(dhidden, dlogps, hidden, lm_head, labels, lse, scratch));
  check_f32(op, {{&hidden, "hidden"}, {&lm_head, "lm_head"}, {&dhidden, "dhidden"}});

  int64_t vocab = lm_head.shape[0], channels = hidden.shape[1];
  std::vector<int64_t> tokens = labelled_tokens(op, labels, vocab);
  fill_zero(dhidden);
  const int32_t* label_data = labels.i32();
  const float* dlogp_data = dlogps.f32();
  const float* lse_data = lse.f32();
  float* dhidden_data = dhidden.f32();
  auto backward_chunk = [&](const int64_t* chunk_tokens, const Tensor& logits,
                            const Tensor& block) {
    int64_t rows = logits.shape[0];
    float* logit_data = logits.f32();
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r) {
      float* z = logit_data + r * vocab;
      int64_t n = chunk_tokens[r];
      // dz_v = dlogp (1[v = label] - softmax_v), written over the logits.
      softmax_gradient_row(z, vocab, dlogp_data[n], lse_data[n]);
      z[label_data[n]] += dlogp_data[n];
    }
    // The block's hidden rows are dead now; it receives the chunk's dhidden rows = dz @ W.
    matmul(block, logits, lm_head, false, false);
    const float* block_data = block.f32();
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dhidden_data + chunk_tokens[r] * channels, block_data + r * channels,
                  sizeof(float) * size_t(channels));
  };
  for_each_logit_chunk(hidden, lm_head, tokens, scratch, backward_chunk);
}

}  // namespace cst
