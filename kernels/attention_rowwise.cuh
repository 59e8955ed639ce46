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
// Every output is written by one warp after a fixed order of additions.
#pragma once
#include "kernels/attention_tiles.cuh"

namespace cst::cuda::rowwise {

constexpr int kMaxDimsPerLane = 8;
constexpr int kMaxHeadDim = 32 * kMaxDimsPerLane;

// out, lse from q, k, v: params as for the flash kernels, with params.cu_seqlens on the device
// holding sequences + 1 offsets.
void forward(const flash::AttentionParams& params, int sequences, int head_dim);
// dq, dk, dv; params.dout_dot_out must hold tokens x heads floats of scratch.
void backward(const flash::AttentionParams& params, int sequences, int head_dim);

}  // namespace cst::cuda::rowwise
