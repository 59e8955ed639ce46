// CUDA fused log-probabilities, chunk by chunk over the batch's tokens:
//   logits (rows, V) f32 = hidden rows (rows, C) @ lm_head^T     (cuBLASLt, f32 accumulation)
// then one block of threads per row reduces the logits to lse, the label's log-prob and the
// logit sum with an online softmax (running max and rescaled sum, one pass over V).
// The backward recomputes the chunk's logits, turns them into dz in a separate buffer of the
// head's dtype (converting in place would let one row's bf16 output overwrite another row's f32
// input), and the chunk's dhidden rows = dz @ lm_head.
//
// The labels stay on the device. The CPU reference gathers only the labelled tokens, but their
// count is needed on the host to size the GEMMs, and reading it back would cost a
// synchronisation per call. So every token's logits are computed and the row kernels skip the
// unlabelled ones: their values are 0 and their dz rows are 0, which makes their dhidden rows
// exactly 0. The extra GEMM work is the unlabelled share of the LM head, a few percent of a step.
#include <algorithm>

#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/logprobs.h"

namespace cst::cuda {

namespace {

constexpr int kRowThreads = 256;

// The label of a token if it has a valid one, else -1. A label past the vocabulary is recorded in
// the bad-index note (raised at the next synchronisation; thread 0 of the row's block writes it)
// and the token treated as unlabelled.
__device__ inline int32_t usable_label(const int32_t* labels, int64_t token, int64_t vocab,
                                       BadIndexNote* note, BadIndexLabel label_name) {
  int32_t label = labels[token];
  if (label >= vocab) {
    if (threadIdx.x == 0) record_bad_index(note, label_name, token, label, vocab);
    return -1;
  }
  return label < 0 ? -1 : label;
}

// Running (max, sum of exp(z - max)) of a set of logits; merging two sets rescales both sums to
// the larger max. A thread that saw no logits has max = -inf and sum = 0.
struct SoftmaxState {
  float max = -INFINITY;
  float sum = 0.0f;
};

__device__ inline SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return a;  // both empty
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

// One block per row of the chunk's logits (rows, vocab); row r is token first_token + r.
__global__ void logit_stats_kernel(float* logps, float* lse, float* logit_sums, const float* logits,
                                   int64_t vocab, int64_t first_token, const int32_t* labels,
                                   BadIndexNote* note, BadIndexLabel labels_name) {
  const int64_t token = first_token + blockIdx.x;
  // The whole block reads the same label, so it leaves together, before any barrier.
  const int32_t label = usable_label(labels, token, vocab, note, labels_name);
  if (label < 0) {
    if (threadIdx.x == 0) logps[token] = lse[token] = logit_sums[token] = 0.0f;
    return;
  }
  const float* z = logits + int64_t(blockIdx.x) * vocab;
  SoftmaxState state;
  double sum = 0.0;  // double: the metric sums tens of thousands of logits of both signs
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    float value = z[v];
    sum += value;
    if (value > state.max) {  // a new max: rescale what was summed so far
      state.sum = state.sum * expf(state.max - value) + 1.0f;
      state.max = value;
    } else {
      state.sum += expf(value - state.max);
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    SoftmaxState other{__shfl_xor_sync(0xffffffffu, state.max, offset),
                       __shfl_xor_sync(0xffffffffu, state.sum, offset)};
    state = merge(state, other);
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  __shared__ float warp_maxes[kRowThreads / 32], warp_exp_sums[kRowThreads / 32];
  __shared__ double warp_sums[kRowThreads / 32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_maxes[warp] = state.max;
    warp_exp_sums[warp] = state.sum;
    warp_sums[warp] = sum;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kRowThreads / 32; ++w) {  // fixed order: deterministic
    state = merge(state, SoftmaxState{warp_maxes[w], warp_exp_sums[w]});
    sum += warp_sums[w];
  }
  float row_lse = state.max + logf(state.sum);
  lse[token] = row_lse;
  logps[token] = z[label] - row_lse;
  logit_sums[token] = float(sum);
}

// dz (rows, vocab) = dlogp * (onehot(label) - exp(z - lse)), one block per row; rows of
// unlabelled tokens are zero (dz is reused across chunks, so they are written, not skipped).
template <class TZ>
__global__ void logit_grad_kernel(TZ* dz, const float* logits, int64_t vocab, int64_t first_token,
                                  const int32_t* labels, const float* dlogps, const float* lse,
                                  BadIndexNote* note, BadIndexLabel labels_name) {
  const int64_t offset = int64_t(blockIdx.x) * vocab, token = first_token + blockIdx.x;
  const int32_t label = usable_label(labels, token, vocab, note, labels_name);
  const float dlogp = label < 0 ? 0.0f : dlogps[token], row_lse = lse[token];
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    float grad = label < 0 ? 0.0f : -dlogp * expf(logits[offset + v] - row_lse);
    if (v == label) grad += dlogp;
    dz[offset + v] = from_float<TZ>(grad);
  }
}

void check_logprobs_tensors(const char* op, const Tensor& hidden, const Tensor& lm_head,
                            const Tensor& labels, std::initializer_list<const Tensor*> per_token,
                            const Arena& scratch) {
  for (const Tensor* t : {&hidden, &lm_head, &labels}) check_on_gpu(*t, op, "every argument");
  check_rank(hidden, 2, op, "hidden");
  check_rank(lm_head, 2, op, "lm_head");
  check_dims(lm_head, {lm_head.shape[0], hidden.shape[1]}, op, "lm_head");
  check_dims(labels, {hidden.shape[0]}, op, "labels");
  check_dtype(labels, DType::i32, op, "labels");
  if (lm_head.dtype != hidden.dtype)
    fail(op, ": hidden ", hidden.describe(), " and lm_head ", lm_head.describe(), " differ in dtype");
  // Tokens index blocks of the row kernels and share a 64-bit word with their label in the note.
  if (hidden.shape[0] > INT32_MAX) fail(op, ": too many tokens in ", hidden.describe());
  for (const Tensor* t : per_token) {
    check_on_gpu(*t, op, "every argument");
    check_dims(*t, {hidden.shape[0]}, op, "per-token value");
    check_dtype(*t, DType::f32, op, "per-token value");
  }
  if (scratch.device() != Device::cuda) fail(op, ": the scratch arena must be on cuda");
}

// Calls body(begin, rows, logits) for each chunk of tokens [begin, begin + rows), with
// logits (rows, V) f32 = hidden[begin : begin + rows] @ lm_head^T.
template <class Body>
void for_each_logit_chunk(const Tensor& hidden, const Tensor& lm_head, Arena& scratch, Body body) {
  const int64_t tokens = hidden.shape[0], vocab = lm_head.shape[0];
  const int64_t chunk = std::min(logprobs_chunk_tokens(vocab), tokens);
  Tensor logits = scratch.alloc({chunk, vocab}, DType::f32);
  for (int64_t begin = 0; begin < tokens; begin += chunk) {
    const int64_t rows = std::min(chunk, tokens - begin);
    Tensor chunk_logits = logits.rows(0, rows);
    cuda::matmul(chunk_logits, hidden.rows(begin, begin + rows), lm_head, false, true, 1.0f, 0.0f);
    body(begin, rows, chunk_logits);
  }
}

}  // namespace

void logprobs_forward(const Tensor& logps, const Tensor& lse, const Tensor& logit_sums,
                      const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                      Arena& scratch) {
  const char* op = "logprobs_forward";
  check_logprobs_tensors(op, hidden, lm_head, labels, {&logps, &lse, &logit_sums}, scratch);
  const int64_t vocab = lm_head.shape[0];
  if (hidden.shape[0] == 0) return;
  const BadIndexLabel labels_name{"logprobs_forward: labels", "the vocabulary"};
  for_each_logit_chunk(hidden, lm_head, scratch, [&](int64_t begin, int64_t rows, const Tensor& logits) {
    CST_LAUNCH(unsigned(rows), kRowThreads, 0, logit_stats_kernel)(
        logps.f32(), lse.f32(), logit_sums.f32(), logits.f32(), vocab, begin, labels.i32(),
        bad_index_note(), labels_name);
    CUDA_CHECK_LAUNCH();
  });
}

void logprobs_backward(const Tensor& dhidden, const Tensor& dlogps, const Tensor& hidden,
                       const Tensor& lm_head, const Tensor& labels, const Tensor& lse,
                       Arena& scratch) {
  const char* op = "logprobs_backward";
  check_logprobs_tensors(op, hidden, lm_head, labels, {&dlogps, &lse}, scratch);
  check_on_gpu(dhidden, op, "dhidden");
  check_dims(dhidden, {hidden.shape[0], hidden.shape[1]}, op, "dhidden");
  const int64_t tokens = hidden.shape[0], vocab = lm_head.shape[0];
  if (tokens == 0) return;
  const BadIndexLabel labels_name{"logprobs_backward: labels", "the vocabulary"};
  Tensor dz = scratch.alloc({std::min(logprobs_chunk_tokens(vocab), tokens), vocab}, lm_head.dtype);
  for_each_logit_chunk(hidden, lm_head, scratch, [&](int64_t begin, int64_t rows, const Tensor& logits) {
    Tensor chunk_dz = dz.rows(0, rows);
    with_float_type(dz, op, "lm_head", [&](auto tag) {
      using TZ = decltype(tag);
      CST_LAUNCH(unsigned(rows), kRowThreads, 0, logit_grad_kernel)(
          static_cast<TZ*>(chunk_dz.data), logits.f32(), vocab, begin, labels.i32(), dlogps.f32(),
          lse.f32(), bad_index_note(), labels_name);
      CUDA_CHECK_LAUNCH();
    });
    cuda::matmul(dhidden.rows(begin, begin + rows), chunk_dz, lm_head, false, false, 1.0f, 0.0f);
  });
}

}  // namespace cst::cuda
