// Cached-decoding attention on the GPU: one warp per (new token, query head). The warp walks the
// visible cached keys of the token's sequence once with the online softmax of the row-wise
// attention kernels (kernels/attention_rowwise.cuh: each lane holds up to 8 dimensions, so any
// head_dim up to 256 works), so nothing proportional to the sequence is stored. Decoding is
// memory-bound on the cache reads; this simple form reads each key and value row once per query
// head.
#include "kernels/attention_decode.h"
#include "kernels/attention_rowwise.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_utils.cuh"

namespace cst::cuda {
namespace {

using rowwise::kMaxDimsPerLane;

template <class T>
__global__ void attention_decode_kernel(T* out, const T* q, const T* k_cache, const T* v_cache,
                                        const int32_t* cache_rows, const int32_t* positions, int64_t n,
                                        int64_t rows, int heads, int kv_heads, int head_dim, int window,
                                        float scale, BadIndexNote* note, BadIndexLabel rows_label,
                                        BadIndexLabel position_label) {
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n * heads) return;
  const int64_t i = warp / heads;
  const int h = int(warp % heads);
  const int kv_head = h / (heads / kv_heads);
  const int64_t position = positions[i], own_row = cache_rows[i];
  const int64_t base = own_row - position;  // the cache row of the sequence's position 0
  const int slots = (head_dim - lane + 31) / 32;  // the slots this lane holds (0 past head_dim)
  T* out_row = out + (i * heads + h) * head_dim;
  if (position < 0 || base < 0 || own_row >= rows) {
    if (h == 0 && lane == 0) {
      if (position < 0) record_bad_index(note, position_label, i, int32_t(position), rows);
      else record_bad_index(note, rows_label, i, int32_t(base < 0 ? base : own_row), rows);
    }
#pragma unroll
    for (int s = 0; s < kMaxDimsPerLane; ++s)
      if (s < slots) out_row[lane + 32 * s] = from_float<T>(0.0f);
    return;
  }
  const int64_t first = window > 0 ? max(int64_t(0), position - window + 1) : 0;

  rowwise::Slots q_part;
  rowwise::load_row(q_part, q + (i * heads + h) * head_dim, lane, head_dim);
  rowwise::OnlineSoftmax softmax;
  for (int64_t j = first; j <= position; ++j) {
    const int64_t row = ((base + j) * kv_heads + kv_head) * head_dim;
    softmax.add(scale * rowwise::dot(q_part, k_cache + row, lane, head_dim), v_cache + row, lane, head_dim);
  }
#pragma unroll
  for (int s = 0; s < kMaxDimsPerLane; ++s)
    if (s < slots) out_row[lane + 32 * s] = from_float<T>(softmax.acc[s] * softmax.normaliser());
}

}  // namespace

void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& cache_rows, const Tensor& positions, const AttentionShape& shape) {
  const char* op = "attention_decode";
  for (const Tensor* t : {&out, &q, &k_cache, &v_cache, &cache_rows, &positions}) check_on_gpu(*t, op, "every argument");
  if (shape.head_dim < 1 || shape.head_dim > 32 * kMaxDimsPerLane)
    fail("attention_decode on CUDA: head_dim ", shape.head_dim, " must be 1 to ", 32 * kMaxDimsPerLane);
  if (q.dtype != k_cache.dtype || q.dtype != v_cache.dtype || q.dtype != out.dtype)
    fail("attention_decode on CUDA: q, caches and out must share a dtype");
  const int64_t n = q.shape[0], rows = k_cache.shape[0];
  if (n == 0) return;
  const int64_t warps = n * shape.heads;
  const int threads = 256;
  const int blocks = ceil_div(warps * 32, threads);
  const float scale = 1.0f / sqrtf(float(shape.head_dim));
  const BadIndexLabel rows_name{"attention_decode: the first or last cache row of token", "the cache's rows"};
  const BadIndexLabel position_name{"attention_decode: the position of token", "the positions the cache holds"};
  with_float_type(q, op, "q", [&](auto tag) {
    using T = decltype(tag);
    CST_LAUNCH(blocks, threads, 0, attention_decode_kernel)(
        static_cast<T*>(out.data), static_cast<const T*>(q.data), static_cast<const T*>(k_cache.data),
        static_cast<const T*>(v_cache.data), cache_rows.i32(), positions.i32(), n, rows, shape.heads,
        shape.kv_heads, shape.head_dim, shape.window, scale, bad_index_note(), rows_name,
        position_name);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cst::cuda
