// The row-wise attention kernels (kernels/attention_rowwise.cuh). Lane l of a warp holds the
// head dimensions l, l + 32, ... below D: slot s of its arrays is dimension l + 32 s. The slot
// loops run over all kMaxDimsPerLane slots, unrolled, skipping those past D, so the arrays stay in
// registers.
#include "kernels/attention_rowwise.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_utils.cuh"

namespace cst::cuda::rowwise {
namespace {

using bf16 = __nv_bfloat16;
using flash::AttentionParams;

// Where a token sits: its sequence's first token and length, and its position in it.
struct TokenPlace {
  int64_t start = 0;
  int length = 0;
  int position = 0;
};

// The sequence holding token i: the last s with cu_seqlens[s] <= i (binary search).
__device__ TokenPlace place_of(const int32_t* cu_seqlens, int sequences, int64_t i) {
  int low = 0, high = sequences - 1;
  while (low < high) {
    const int middle = (low + high + 1) / 2;
    if (cu_seqlens[middle] <= i) low = middle;
    else high = middle - 1;
  }
  return {cu_seqlens[low], cu_seqlens[low + 1] - cu_seqlens[low], int(i - cu_seqlens[low])};
}

// One head's row of D values into registers, as float (0 in the slots past D).
__device__ void load_row(float (&values)[kMaxDimsPerLane], const bf16* row, int lane, int head_dim) {
#pragma unroll
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    values[s] = d < head_dim ? to_float(row[d]) : 0.0f;
  }
}

__device__ void store_row(bf16* row, const float (&values)[kMaxDimsPerLane], float factor, int lane, int head_dim) {
#pragma unroll
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) row[d] = from_float<bf16>(values[s] * factor);
  }
}

// a . row over the warp (every lane gets the sum).
__device__ float dot(const float (&a)[kMaxDimsPerLane], const bf16* row, int lane, int head_dim) {
  float partial = 0.0f;
#pragma unroll
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) partial += a[s] * to_float(row[d]);
  }
  return warp_sum(partial);
}

// acc += weight * row
__device__ void add_scaled(float (&acc)[kMaxDimsPerLane], float weight, const bf16* row, int lane, int head_dim) {
#pragma unroll
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) acc[s] += weight * to_float(row[d]);
  }
}

// The first key position a query at `position` sees.
__device__ int first_visible_key(int position, int window) {
  return window > 0 ? max(0, position - window + 1) : 0;
}

__global__ void forward_kernel(AttentionParams p, int sequences, int head_dim) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (warp >= int64_t(p.tokens) * p.heads) return;  // the whole warp
  const int64_t i = warp / p.heads;
  const int h = int(warp % p.heads), kv_head = h / (p.heads / p.kv_heads);
  const TokenPlace place = place_of(p.cu_seqlens, sequences, i);
  float q[kMaxDimsPerLane], acc[kMaxDimsPerLane] = {};
  load_row(q, p.q + (i * p.heads + h) * head_dim, lane, head_dim);
  float running_max = -INFINITY, running_sum = 0.0f;
  for (int j = first_visible_key(place.position, p.window); j <= place.position; ++j) {
    const int64_t row = ((place.start + j) * p.kv_heads + kv_head) * head_dim;
    const float score = p.scale * dot(q, p.k + row, lane, head_dim);
    const float new_max = fmaxf(running_max, score);
    const float rescale = expf(running_max - new_max);  // 0 on the first key
    const float weight = expf(score - new_max);
    running_sum = running_sum * rescale + weight;
#pragma unroll
    for (int s = 0; s < kMaxDimsPerLane; ++s) acc[s] *= rescale;
    add_scaled(acc, weight, p.v + row, lane, head_dim);
    running_max = new_max;
  }
  store_row(p.out + (i * p.heads + h) * head_dim, acc, 1.0f / running_sum, lane, head_dim);
  if (lane == 0) p.lse[int64_t(h) * p.tokens + i] = running_max + logf(running_sum);
}

__global__ void dout_dot_out_kernel(AttentionParams p, int head_dim) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (warp >= int64_t(p.tokens) * p.heads) return;
  float dout[kMaxDimsPerLane];
  load_row(dout, p.dout + warp * head_dim, lane, head_dim);
  const float sum = dot(dout, p.out + warp * head_dim, lane, head_dim);
  const int64_t i = warp / p.heads, h = warp % p.heads;
  if (lane == 0) p.dout_dot_out[h * p.tokens + i] = sum;
}

// p_ij and ds_ij = p_ij (dp_ij - D_i) of query row (q, dout, lse, D) against key row j.
struct ScoreGradient {
  float probability, score_gradient;
};
__device__ ScoreGradient score_gradient(const AttentionParams& p, const float (&q)[kMaxDimsPerLane],
                                        const float (&dout)[kMaxDimsPerLane], float lse, float dout_dot_out,
                                        int64_t key_row, int lane, int head_dim) {
  const float probability = expf(p.scale * dot(q, p.k + key_row, lane, head_dim) - lse);
  const float dp = dot(dout, p.v + key_row, lane, head_dim);
  return {probability, probability * (dp - dout_dot_out)};
}

__global__ void dq_kernel(AttentionParams p, int sequences, int head_dim) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (warp >= int64_t(p.tokens) * p.heads) return;
  const int64_t i = warp / p.heads;
  const int h = int(warp % p.heads), kv_head = h / (p.heads / p.kv_heads);
  const TokenPlace place = place_of(p.cu_seqlens, sequences, i);
  float q[kMaxDimsPerLane], dout[kMaxDimsPerLane], dq[kMaxDimsPerLane] = {};
  load_row(q, p.q + warp * head_dim, lane, head_dim);
  load_row(dout, p.dout + warp * head_dim, lane, head_dim);
  const float lse = p.lse[int64_t(h) * p.tokens + i], dout_dot_out = p.dout_dot_out[int64_t(h) * p.tokens + i];
  for (int j = first_visible_key(place.position, p.window); j <= place.position; ++j) {
    const int64_t row = ((place.start + j) * p.kv_heads + kv_head) * head_dim;
    add_scaled(dq, score_gradient(p, q, dout, lse, dout_dot_out, row, lane, head_dim).score_gradient, p.k + row,
               lane, head_dim);
  }
  store_row(p.dq + warp * head_dim, dq, p.scale, lane, head_dim);
}

__global__ void dkdv_kernel(AttentionParams p, int sequences, int head_dim) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (warp >= int64_t(p.tokens) * p.kv_heads) return;
  const int64_t j = warp / p.kv_heads;
  const int kv_head = int(warp % p.kv_heads), group = p.heads / p.kv_heads;
  const TokenPlace place = place_of(p.cu_seqlens, sequences, j);
  // Key position k is seen by the queries at positions k .. k + window - 1 (all later ones
  // without a window) of its sequence.
  const int last_query = p.window > 0 ? min(place.length - 1, place.position + p.window - 1) : place.length - 1;
  const int64_t key_row = warp * head_dim;
  float dk[kMaxDimsPerLane] = {}, dv[kMaxDimsPerLane] = {};
  for (int h = kv_head * group; h < (kv_head + 1) * group; ++h) {
    for (int position = place.position; position <= last_query; ++position) {
      const int64_t i = place.start + position;
      float q[kMaxDimsPerLane], dout[kMaxDimsPerLane];
      load_row(q, p.q + (i * p.heads + h) * head_dim, lane, head_dim);
      load_row(dout, p.dout + (i * p.heads + h) * head_dim, lane, head_dim);
      const ScoreGradient g = score_gradient(p, q, dout, p.lse[int64_t(h) * p.tokens + i],
                                             p.dout_dot_out[int64_t(h) * p.tokens + i], key_row, lane, head_dim);
#pragma unroll
      for (int s = 0; s < kMaxDimsPerLane; ++s) {
        dk[s] += g.score_gradient * q[s];
        dv[s] += g.probability * dout[s];
      }
    }
  }
  store_row(p.dk + key_row, dk, p.scale, lane, head_dim);
  store_row(p.dv + key_row, dv, 1.0f, lane, head_dim);
}

// Blocks of 256 threads for one warp per row.
int blocks_for_warps(int64_t warps) { return int((warps * 32 + 255) / 256); }

}  // namespace

void forward(const AttentionParams& params, int sequences, int head_dim) {
  forward_kernel<<<blocks_for_warps(int64_t(params.tokens) * params.heads), 256, 0, stream()>>>(params, sequences,
                                                                                                  head_dim);
  CUDA_CHECK_LAUNCH();
}

void backward(const AttentionParams& params, int sequences, int head_dim) {
  const int query_blocks = blocks_for_warps(int64_t(params.tokens) * params.heads);
  dout_dot_out_kernel<<<query_blocks, 256, 0, stream()>>>(params, head_dim);
  CUDA_CHECK_LAUNCH();
  dq_kernel<<<query_blocks, 256, 0, stream()>>>(params, sequences, head_dim);
  CUDA_CHECK_LAUNCH();
  dkdv_kernel<<<blocks_for_warps(int64_t(params.tokens) * params.kv_heads), 256, 0, stream()>>>(params, sequences,
                                                                                                 head_dim);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cst::cuda::rowwise
