// Fused per-token log-probabilities: the LM head and log-softmax at the label, chunk by chunk,
// so the (tokens x V) logits are never held for the whole batch.
//
// forward, for each token n with labels[n] >= 0 (labels < 0 are skipped: prompt and padding):
//   z = W h_n            (V logits; W is the lm_head [V, C])
//   lse_n = log sum_v exp(z_v)
//   logp_n = z_label - lse_n
//   logit_sum_n = sum_v z_v       (for trl's logits/chosen metric = mean raw logit)
// backward, given dlogp_n:
//   dz_v = dlogp_n * (1[v = label] - exp(z_v - lse_n))
//   dh_n = W^T dz          (the head is frozen: no dW)
// Skipped tokens get logp = 0, lse = 0, logit_sum = 0 and dh = 0.
#pragma once
#include "kernels/tensor.h"

namespace cst {

class Arena;

// hidden (N, C); lm_head (V, C); labels (N) i32; logps, lse, logit_sums (N) f32.
// scratch holds one chunk of logits (chunk_tokens x V). A label >= V is an error: on the CPU at
// once; on CUDA, where the labels are not read back, at the next synchronisation (the token is
// treated as unlabelled). CUDA computes the logits of every token and skips the unlabelled ones
// in its row kernels; the CPU gathers the labelled tokens first.
void logprobs_forward(const Tensor& logps, const Tensor& lse, const Tensor& logit_sums,
                      const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                      Arena& scratch);
// dhidden (N, C) is overwritten.
void logprobs_backward(const Tensor& dhidden, const Tensor& dlogps, const Tensor& hidden,
                       const Tensor& lm_head, const Tensor& labels, const Tensor& lse,
                       Arena& scratch);

// Tokens per chunk: about 64 MiB of f32 logits, at least one token.
int64_t logprobs_chunk_tokens(int64_t vocab_size);
// Fixes the tokens per chunk for every later call (0 restores the default). Tests lower it to
// cover several chunks with a small vocabulary; a tight memory budget can lower it too.
void set_logprobs_chunk_tokens(int64_t tokens);

namespace cuda {
void logprobs_forward(const Tensor& logps, const Tensor& lse, const Tensor& logit_sums,
                      const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                      Arena& scratch);
void logprobs_backward(const Tensor& dhidden, const Tensor& dlogps, const Tensor& hidden,
                       const Tensor& lm_head, const Tensor& labels, const Tensor& lse,
                       Arena& scratch);
}

}  // namespace cst
