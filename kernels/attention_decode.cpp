// CPU reference of cached-decoding attention: one task per (new token, head), a two-pass softmax
// over the visible cached keys.
#include "kernels/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& cache_rows, const Tensor& positions, const AttentionShape& shape) {
  const char* op = "attention_decode";
  Device device = common_device(op, out, q, k_cache, v_cache, cache_rows, positions);
  if (shape.heads <= 0 || shape.kv_heads <= 0 || shape.heads % shape.kv_heads != 0)
    fail(op, ": bad heads ", shape.heads, " / kv_heads ", shape.kv_heads);
  check_rank(q, 3, op, "q");
  check_rank(k_cache, 3, op, "k_cache");
  const int64_t n = q.shape[0], H = shape.heads, KVH = shape.kv_heads, D = shape.head_dim;
  const int64_t rows = k_cache.shape[0];
  check_dims(q, {n, H, D}, op, "q");
  check_dims(out, {n, H, D}, op, "out");
  check_dims(k_cache, {rows, KVH, D}, op, "k_cache");
  check_dims(v_cache, {rows, KVH, D}, op, "v_cache");
  for (auto [t, name] : {std::pair{&cache_rows, "cache_rows"}, {&positions, "positions"}}) {
    check_dims(*t, {n}, op, name);
    check_dtype(*t, DType::i32, op, name);
  }
  if (device == Device::cuda)
    return CST_ON_CUDA(cuda::attention_decode(out, q, k_cache, v_cache, cache_rows, positions, shape));
  for (auto [t, name] : {std::pair{&out, "out"}, {&q, "q"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"}})
    check_dtype(*t, DType::f32, op, name);
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = cache_rows.i32()[i], position = positions.i32()[i];
    if (position < 0 || row - position < 0 || row >= rows)
      fail(op, ": token ", i, " at position ", position, " with its key at row ", row,
           " reaches outside the cache's ", rows, " rows");
    longest = std::max(longest, position + 1);
  }

  const float scale = float(1.0 / std::sqrt(double(D)));
  const int64_t group = H / KVH;
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(longest));
#pragma omp for collapse(2)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t position = positions.i32()[i];
        const int64_t first = shape.window > 0 ? std::max<int64_t>(0, position - shape.window + 1) : 0;
        // Position j of this token's sequence is cache row base + j.
        const int64_t base = cache_rows.i32()[i] - position;
        const float* q_row = q.f32() + (i * H + h) * D;
        const int64_t kv_offset = (h / group) * D;
        float max_score = -INFINITY;
        for (int64_t j = first; j <= position; ++j) {
          const float* k_row = k_cache.f32() + (base + j) * KVH * D + kv_offset;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += q_row[d] * k_row[d];
          scores[size_t(j)] = scale * dot;
          max_score = std::max(max_score, scores[size_t(j)]);
        }
        // scores become the unnormalised weights exp(s_j - max), each exponential taken once.
        double normaliser = 0;
        for (int64_t j = first; j <= position; ++j) {
          scores[size_t(j)] = float(std::exp(double(scores[size_t(j)] - max_score)));
          normaliser += double(scores[size_t(j)]);
        }
        float* out_row = out.f32() + (i * H + h) * D;
        std::fill(out_row, out_row + D, 0.0f);
        for (int64_t j = first; j <= position; ++j) {
          const float p = float(double(scores[size_t(j)]) / normaliser);
          const float* v_row = v_cache.f32() + (base + j) * KVH * D + kv_offset;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) out_row[d] += p * v_row[d];
        }
      }
    }
  }
}

}  // namespace cst
