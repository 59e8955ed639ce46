// Launches of the row-wise attention kernels (kernels/attention_rowwise.cuh has the warp bodies):
// blocks of 8 warps, one row per warp.
#include "kernels/attention_rowwise.cuh"
#include "kernels/cuda_common.cuh"

namespace cst::cuda::rowwise {
namespace {

__device__ __forceinline__ int64_t warp_row() {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
}

__global__ void __launch_bounds__(kThreads) forward_kernel(AttentionParams p, int sequences, int head_dim) {
  forward_warp(p, sequences, head_dim, warp_row(), int(threadIdx.x % 32));
}

__global__ void __launch_bounds__(kThreads) dout_dot_out_kernel(AttentionParams p, int head_dim) {
  dout_dot_out_warp(p, head_dim, warp_row(), int(threadIdx.x % 32));
}

__global__ void __launch_bounds__(kThreads) dq_kernel(AttentionParams p, int sequences, int head_dim) {
  dq_warp(p, sequences, head_dim, warp_row(), int(threadIdx.x % 32));
}

__global__ void __launch_bounds__(kThreads) dkdv_kernel(AttentionParams p, int sequences, int head_dim) {
  dkdv_warp(p, sequences, head_dim, warp_row(), int(threadIdx.x % 32));
}

int blocks_for_rows(int64_t rows) { return int((rows * 32 + kThreads - 1) / kThreads); }

}  // namespace

void forward(const AttentionParams& params, int sequences, int head_dim) {
  const int64_t rows = int64_t(params.tokens) * params.heads;
  CST_LAUNCH(blocks_for_rows(rows), kThreads, 0, forward_kernel)(params, sequences, head_dim);
  CUDA_CHECK_LAUNCH();
}

void backward(const AttentionParams& params, int sequences, int head_dim) {
  const int64_t query_rows = int64_t(params.tokens) * params.heads;
  const int64_t key_rows = int64_t(params.tokens) * params.kv_heads;
  CST_LAUNCH(blocks_for_rows(query_rows), kThreads, 0, dout_dot_out_kernel)(params, head_dim);
  CUDA_CHECK_LAUNCH();
  CST_LAUNCH(blocks_for_rows(query_rows), kThreads, 0, dq_kernel)(params, sequences, head_dim);
  CUDA_CHECK_LAUNCH();
  CST_LAUNCH(blocks_for_rows(key_rows), kThreads, 0, dkdv_kernel)(params, sequences, head_dim);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cst::cuda::rowwise
