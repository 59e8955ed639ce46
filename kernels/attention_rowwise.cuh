// Attention on the GPU for the head dims the flash kernels do not cover (kernels/attention.h has
// the math). The flash kernels are written for D = 64 and 128, the head dims of Llama and
// Mistral; the small test and demo models have D = 12, 16 or 24. These kernels take any D up to
// 256 and are deterministic like the flash ones, but plain: one warp per query row (forward,
// dQ) or key row (dK/dV), which reads every visible K and V row once per query head.
//
//   forward  warp (token i, head h): online softmax over the keys i sees; writes o_i and lse_i
//   D        warp (token i, head h): D_i = do_i . o_i
//   dQ       warp (token i, head h): dq_i = scale * sum_j ds_ij k_j
//   dK, dV   warp (token j, kv head): sums ds_ij q_i and p_ij do_i over the group's query heads
//            and the queries i that see key j
// Every output is written by one warp after a fixed order of additions, in f32 until the store.
//
// Lane l of a warp holds the head dimensions l, l + 32, ... below D: slot s of its arrays is
// dimension l + 32 s. The slot loops run over all kMaxDimsPerLane slots, unrolled, skipping those
// past D, so the arrays stay in registers.
//
// Like the tile code, the warp bodies below use nothing of CUDA but kernels/attention_primitives.cuh
// (shuffle_xor through warp_sum, store_bf16), so tests/test_attention_emulated.cpp runs them on
// the CPU too; kernels/attention_rowwise.cu launches them.
#pragma once
#include "kernels/attention_tiles.cuh"

namespace cst::cuda::rowwise {

using flash::AttentionParams;
using flash::bf16;

constexpr int kMaxDimsPerLane = 8;
constexpr int kMaxHeadDim = 32 * kMaxDimsPerLane;
constexpr int kThreads = 256;  // 8 warps, one row each

// out, lse from q, k, v: params as for the flash kernels, with params.cu_seqlens on the device
// holding sequences + 1 offsets.
void forward(const AttentionParams& params, int sequences, int head_dim);
// dq, dk, dv; params.dout_dot_out must hold tokens x heads floats of scratch.
void backward(const AttentionParams& params, int sequences, int head_dim);

// ---- the warp bodies ----

using Slots = float[kMaxDimsPerLane];

// Where a token sits: its sequence's first token and length, and its position in it.
struct TokenPlace {
  int64_t start = 0;
  int length = 0;
  int position = 0;
};

// The sequence holding token i: the last s with cu_seqlens[s] <= i (binary search; an empty
// sequence before it shares its offset and is skipped).
CST_FLASH_DEVICE TokenPlace place_of(const int32_t* cu_seqlens, int sequences, int64_t i) {
  int low = 0, high = sequences - 1;
  while (low < high) {
    const int middle = (low + high + 1) / 2;
    if (cu_seqlens[middle] <= i) low = middle;
    else high = middle - 1;
  }
  return {cu_seqlens[low], cu_seqlens[low + 1] - cu_seqlens[low], int(i - cu_seqlens[low])};
}

// The first key position a query at `position` sees.
CST_FLASH_DEVICE int first_visible_key(int position, int window) {
  return window > 0 && position - window + 1 > 0 ? position - window + 1 : 0;
}

// The row helpers take bf16 or f32 rows (Element): the cached-decoding kernel
// (kernels/attention_decode.cu) decodes with either.

// A row of D values into this lane's slots, as float (0 past D).
template <class Element>
CST_FLASH_DEVICE void load_row(Slots& values, const Element* row, int lane, int head_dim) {
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    values[s] = d < head_dim ? float(row[d]) : 0.0f;
  }
}

CST_FLASH_DEVICE void store_row(bf16* row, const Slots& values, float factor, int lane, int head_dim) {
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) flash::store_bf16(row + d, values[s] * factor);
  }
}

// a . row over the warp (every lane gets the sum).
template <class Element>
CST_FLASH_DEVICE float dot(const Slots& a, const Element* row, int lane, int head_dim) {
  float partial = 0.0f;
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) partial += a[s] * float(row[d]);
  }
  return flash::warp_sum(partial);
}

// acc += weight * row
template <class Element>
CST_FLASH_DEVICE void add_scaled(Slots& acc, float weight, const Element* row, int lane, int head_dim) {
  for (int s = 0; s < kMaxDimsPerLane; ++s) {
    const int d = lane + 32 * s;
    if (d < head_dim) acc[s] += weight * float(row[d]);
  }
}

// The online softmax over one query's keys, one key at a time: the running max of the scores, the
// running sum of exp(score - max) and the unnormalised output, rescaled whenever the max grows.
struct OnlineSoftmax {
  float running_max = -INFINITY, running_sum = 0.0f;
  Slots acc = {};

  template <class Element>
  CST_FLASH_DEVICE void add(float score, const Element* value_row, int lane, int head_dim) {
    const float new_max = fmaxf(running_max, score);
    const float rescale = expf(running_max - new_max);  // 0 on the first key
    const float weight = expf(score - new_max);
    running_sum = running_sum * rescale + weight;
    for (int s = 0; s < kMaxDimsPerLane; ++s) acc[s] *= rescale;
    add_scaled(acc, weight, value_row, lane, head_dim);
    running_max = new_max;
  }
  // Slot s of the output is acc[s] * normaliser().
  CST_FLASH_DEVICE float normaliser() const { return 1.0f / running_sum; }
  CST_FLASH_DEVICE float lse() const { return running_max + logf(running_sum); }
};

// Forward for row = token * H + head (the whole warp returns past the last row).
CST_FLASH_DEVICE void forward_warp(const AttentionParams& p, int sequences, int head_dim, int64_t row, int lane) {
  if (row >= int64_t(p.tokens) * p.heads) return;
  const int64_t i = row / p.heads;
  const int h = int(row % p.heads), kv_head = h / (p.heads / p.kv_heads);
  const TokenPlace place = place_of(p.cu_seqlens, sequences, i);
  Slots q;
  load_row(q, p.q + row * head_dim, lane, head_dim);
  OnlineSoftmax softmax;
  for (int j = first_visible_key(place.position, p.window); j <= place.position; ++j) {
    const int64_t key_row = ((place.start + j) * p.kv_heads + kv_head) * head_dim;
    softmax.add(p.scale * dot(q, p.k + key_row, lane, head_dim), p.v + key_row, lane, head_dim);
  }
  store_row(p.out + row * head_dim, softmax.acc, softmax.normaliser(), lane, head_dim);
  if (lane == 0) p.lse[int64_t(h) * p.tokens + i] = softmax.lse();
}

// D for row = token * H + head.
CST_FLASH_DEVICE void dout_dot_out_warp(const AttentionParams& p, int head_dim, int64_t row, int lane) {
  if (row >= int64_t(p.tokens) * p.heads) return;
  Slots dout;
  load_row(dout, p.dout + row * head_dim, lane, head_dim);
  const float sum = dot(dout, p.out + row * head_dim, lane, head_dim);
  const int64_t i = row / p.heads, h = row % p.heads;
  if (lane == 0) p.dout_dot_out[h * p.tokens + i] = sum;
}

// p_ij and ds_ij = p_ij (dp_ij - D_i) of a query row (q, dout, its lse and D) against key row j.
struct ScoreGradient {
  float probability, score_gradient;
};
CST_FLASH_DEVICE ScoreGradient score_gradient(const AttentionParams& p, const Slots& q, const Slots& dout,
                                              float lse, float dout_dot_out, int64_t key_row, int lane,
                                              int head_dim) {
  const float probability = expf(p.scale * dot(q, p.k + key_row, lane, head_dim) - lse);
  const float dp = dot(dout, p.v + key_row, lane, head_dim);
  return {probability, probability * (dp - dout_dot_out)};
}

// dq for row = token * H + head.
CST_FLASH_DEVICE void dq_warp(const AttentionParams& p, int sequences, int head_dim, int64_t row, int lane) {
  if (row >= int64_t(p.tokens) * p.heads) return;
  const int64_t i = row / p.heads;
  const int h = int(row % p.heads), kv_head = h / (p.heads / p.kv_heads);
  const TokenPlace place = place_of(p.cu_seqlens, sequences, i);
  Slots q, dout, dq = {};
  load_row(q, p.q + row * head_dim, lane, head_dim);
  load_row(dout, p.dout + row * head_dim, lane, head_dim);
  const float lse = p.lse[int64_t(h) * p.tokens + i], dout_dot_out = p.dout_dot_out[int64_t(h) * p.tokens + i];
  for (int j = first_visible_key(place.position, p.window); j <= place.position; ++j) {
    const int64_t key_row = ((place.start + j) * p.kv_heads + kv_head) * head_dim;
    const ScoreGradient g = score_gradient(p, q, dout, lse, dout_dot_out, key_row, lane, head_dim);
    add_scaled(dq, g.score_gradient, p.k + key_row, lane, head_dim);
  }
  store_row(p.dq + row * head_dim, dq, p.scale, lane, head_dim);
}

// dk and dv for key_row = token * KVH + kv head.
CST_FLASH_DEVICE void dkdv_warp(const AttentionParams& p, int sequences, int head_dim, int64_t key_row, int lane) {
  if (key_row >= int64_t(p.tokens) * p.kv_heads) return;
  const int64_t j = key_row / p.kv_heads;
  const int kv_head = int(key_row % p.kv_heads), group = p.heads / p.kv_heads;
  const TokenPlace place = place_of(p.cu_seqlens, sequences, j);
  // The key at position k is seen by the queries at positions k .. k + window - 1 of its
  // sequence (all later ones without a window).
  const int last_query = p.window > 0 && place.position + p.window - 1 < place.length - 1
                             ? place.position + p.window - 1
                             : place.length - 1;
  Slots dk = {}, dv = {};
  for (int h = kv_head * group; h < (kv_head + 1) * group; ++h) {
    for (int position = place.position; position <= last_query; ++position) {
      const int64_t i = place.start + position, row = i * p.heads + h;
      Slots q, dout;
      load_row(q, p.q + row * head_dim, lane, head_dim);
      load_row(dout, p.dout + row * head_dim, lane, head_dim);
      const ScoreGradient g = score_gradient(p, q, dout, p.lse[int64_t(h) * p.tokens + i],
                                             p.dout_dot_out[int64_t(h) * p.tokens + i], key_row * head_dim, lane,
                                             head_dim);
      for (int s = 0; s < kMaxDimsPerLane; ++s) {
        dk[s] += g.score_gradient * q[s];
        dv[s] += g.probability * dout[s];
      }
    }
  }
  store_row(p.dk + key_row * head_dim, dk, p.scale, lane, head_dim);
  store_row(p.dv + key_row * head_dim, dv, 1.0f, lane, head_dim);
}

}  // namespace cst::cuda::rowwise
