// CUDA fused log-probabilities: gather the labelled hidden rows, and per chunk of them
//   logits (rows, V) f32 = block (rows, C) @ lm_head^T     (cuBLASLt, f32 accumulation)
// then one block of threads per row reduces the logits to lse, the label's log-prob and the
// logit sum with an online softmax (running max and rescaled sum, one pass over V).
// The backward recomputes the chunk's logits, turns them into dz in a separate buffer of the
// head's dtype (converting in place would let one row's bf16 output overwrite another row's f32
// input), and dhidden rows = dz @ lm_head are scattered back to their tokens.
#include <algorithm>
#include <vector>

#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/logprobs.h"

namespace cst::cuda {

namespace {

constexpr int kRowThreads = 256;

// destination[d(r)] = source[s(r)] for r < rows, where d and s are the index arrays or, when
// null, the identity: one kernel gathers (source_rows set) and scatters (destination_rows set).
template <class T>
__global__ void copy_rows_kernel(T* destination, const int32_t* destination_rows, const T* source,
                                 const int32_t* source_rows, int64_t rows, int64_t channels) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * channels;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i / channels, c = i % channels;
    int64_t d = destination_rows ? destination_rows[r] : r;
    int64_t s = source_rows ? source_rows[r] : r;
    destination[d * channels + c] = source[s * channels + c];
  }
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

// One block per row of the chunk's logits (rows, vocab); writes the row's token's values.
__global__ void logit_stats_kernel(float* logps, float* lse, float* logit_sums, const float* logits,
                                   int64_t vocab, const int32_t* token_rows, const int32_t* labels) {
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
  int32_t token = token_rows[blockIdx.x];
  float row_lse = state.max + logf(state.sum);
  lse[token] = row_lse;
  logps[token] = z[labels[token]] - row_lse;
  logit_sums[token] = float(sum);
}

// dz (rows, vocab) = dlogp * (onehot(label) - exp(z - lse)), one block per row.
template <class TZ>
__global__ void logit_grad_kernel(TZ* dz, const float* logits, int64_t vocab,
                                  const int32_t* token_rows, const int32_t* labels,
                                  const float* dlogps, const float* lse) {
  int64_t offset = int64_t(blockIdx.x) * vocab;
  int32_t token = token_rows[blockIdx.x];
  float dlogp = dlogps[token], row_lse = lse[token];
  int32_t label = labels[token];
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    float grad = -dlogp * expf(logits[offset + v] - row_lse);
    if (v == label) grad += dlogp;
    dz[offset + v] = from_float<TZ>(grad);
  }
}

// The labelled tokens, in order, read on the host (the labels are a few KB; the chunk loop needs
// the count anyway). A label past the vocabulary is an error; a negative label means no label.
std::vector<int32_t> labelled_tokens(const char* op, const Tensor& labels, int64_t vocab) {
  std::vector<int32_t> host_labels(size_t(labels.numel()));
  copy_bytes(host_labels.data(), labels.data, labels.nbytes());
  std::vector<int32_t> tokens;
  for (size_t n = 0; n < host_labels.size(); ++n) {
    if (host_labels[n] >= vocab)
      fail(op, ": labels[", n, "] = ", host_labels[n], " is outside the vocabulary [0, ", vocab, ")");
    if (host_labels[n] >= 0) tokens.push_back(int32_t(n));
  }
  return tokens;
}

void check_logprobs_tensors(const char* op, const Tensor& hidden, const Tensor& lm_head,
                            const Tensor& labels, std::initializer_list<const Tensor*> per_token,
                            const Arena& scratch) {
  for (const Tensor* t : {&hidden, &lm_head, &labels}) check_on_gpu(*t, op, "every argument");
  check_rank(hidden, 2, op, "hidden");
  check_dims(lm_head, {lm_head.dim(0), hidden.shape[1]}, op, "lm_head");
  check_dims(labels, {hidden.shape[0]}, op, "labels");
  check_dtype(labels, DType::i32, op, "labels");
  if (lm_head.dtype != hidden.dtype)
    fail(op, ": hidden ", hidden.describe(), " and lm_head ", lm_head.describe(), " differ in dtype");
  if (hidden.shape[0] > INT32_MAX) fail(op, ": too many tokens in ", hidden.describe());
  for (const Tensor* t : per_token) {
    check_on_gpu(*t, op, "every argument");
    check_dims(*t, {hidden.shape[0]}, op, "per-token value");
    check_dtype(*t, DType::f32, op, "per-token value");
  }
  if (scratch.device() != Device::cuda) fail(op, ": the scratch arena must be on cuda");
}

// The token indices on the device, and the gathered hidden rows and logits of one chunk.
struct ChunkBuffers {
  Tensor token_rows;  // (count) i32
  Tensor block;       // (chunk, C) hidden's dtype
  Tensor logits;      // (chunk, V) f32
  int64_t chunk = 0;
};

ChunkBuffers chunk_buffers(const std::vector<int32_t>& tokens, const Tensor& hidden,
                           const Tensor& lm_head, Arena& scratch) {
  ChunkBuffers buffers;
  int64_t count = int64_t(tokens.size()), vocab = lm_head.shape[0];
  buffers.chunk = std::min(logprobs_chunk_tokens(vocab), count);
  buffers.token_rows = scratch.alloc({count}, DType::i32);
  copy_bytes(buffers.token_rows.data, tokens.data(), sizeof(int32_t) * tokens.size());
  buffers.block = scratch.alloc({buffers.chunk, hidden.shape[1]}, hidden.dtype);
  buffers.logits = scratch.alloc({buffers.chunk, vocab}, DType::f32);
  return buffers;
}

// logits.rows(0, rows) = hidden[token_rows[begin : begin + rows]] @ lm_head^T
void chunk_logits(const ChunkBuffers& buffers, int64_t begin, int64_t rows, const Tensor& hidden,
                  const Tensor& lm_head) {
  int64_t channels = hidden.shape[1];
  with_float_type(hidden, "logprobs", "hidden", [&](auto tag) {
    using T = decltype(tag);
    copy_rows_kernel<<<grid_blocks(rows * channels), kThreads, 0, stream()>>>(
        static_cast<T*>(buffers.block.data), nullptr, static_cast<const T*>(hidden.data),
        buffers.token_rows.i32() + begin, rows, channels);
    CUDA_CHECK_LAUNCH();
  });
  cuda::matmul(buffers.logits.rows(0, rows), buffers.block.rows(0, rows), lm_head, false, true, 1.0f, 0.0f);
}

}  // namespace

void logprobs_forward(const Tensor& logps, const Tensor& lse, const Tensor& logit_sums,
                      const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                      Arena& scratch) {
  const char* op = "logprobs_forward";
  check_logprobs_tensors(op, hidden, lm_head, labels, {&logps, &lse, &logit_sums}, scratch);
  int64_t vocab = lm_head.shape[0];
  std::vector<int32_t> tokens = labelled_tokens(op, labels, vocab);
  fill_zero(logps);
  fill_zero(lse);
  fill_zero(logit_sums);
  if (tokens.empty() || vocab == 0) return;
  ChunkBuffers buffers = chunk_buffers(tokens, hidden, lm_head, scratch);
  int64_t count = int64_t(tokens.size());
  for (int64_t begin = 0; begin < count; begin += buffers.chunk) {
    int64_t rows = std::min(buffers.chunk, count - begin);
    chunk_logits(buffers, begin, rows, hidden, lm_head);
    logit_stats_kernel<<<int(rows), kRowThreads, 0, stream()>>>(
        logps.f32(), lse.f32(), logit_sums.f32(), buffers.logits.f32(), vocab,
        buffers.token_rows.i32() + begin, labels.i32());
    CUDA_CHECK_LAUNCH();
  }
}

void logprobs_backward(const Tensor& dhidden, const Tensor& dlogps, const Tensor& hidden,
                       const Tensor& lm_head, const Tensor& labels, const Tensor& lse,
                       Arena& scratch) {
  const char* op = "logprobs_backward";
  check_logprobs_tensors(op, hidden, lm_head, labels, {&dlogps, &lse}, scratch);
  check_on_gpu(dhidden, op, "dhidden");
  check_dims(dhidden, {hidden.shape[0], hidden.shape[1]}, op, "dhidden");
  int64_t vocab = lm_head.shape[0], channels = hidden.shape[1];
  std::vector<int32_t> tokens = labelled_tokens(op, labels, vocab);
  fill_zero(dhidden);
  if (tokens.empty() || vocab == 0) return;
  ChunkBuffers buffers = chunk_buffers(tokens, hidden, lm_head, scratch);
  Tensor dz = scratch.alloc({buffers.chunk, vocab}, lm_head.dtype);
  Tensor dblock = scratch.alloc({buffers.chunk, channels}, dhidden.dtype);
  int64_t count = int64_t(tokens.size());
  for (int64_t begin = 0; begin < count; begin += buffers.chunk) {
    int64_t rows = std::min(buffers.chunk, count - begin);
    const int32_t* token_rows = buffers.token_rows.i32() + begin;
    chunk_logits(buffers, begin, rows, hidden, lm_head);
    with_float_type(dz, op, "lm_head", [&](auto tag) {
      using TZ = decltype(tag);
      logit_grad_kernel<<<int(rows), kRowThreads, 0, stream()>>>(
          static_cast<TZ*>(dz.data), buffers.logits.f32(), vocab, token_rows, labels.i32(),
          dlogps.f32(), lse.f32());
      CUDA_CHECK_LAUNCH();
    });
    // dhidden rows of the chunk = dz @ lm_head, then scattered to their tokens.
    cuda::matmul(dblock.rows(0, rows), dz.rows(0, rows), lm_head, false, false, 1.0f, 0.0f);
    with_float_type(dhidden, op, "dhidden", [&](auto tag) {
      using T = decltype(tag);
      copy_rows_kernel<<<grid_blocks(rows * channels), kThreads, 0, stream()>>>(
          static_cast<T*>(dhidden.data), token_rows, static_cast<const T*>(dblock.data), nullptr,
          rows, channels);
      CUDA_CHECK_LAUNCH();
    });
  }
}

}  // namespace cst::cuda
