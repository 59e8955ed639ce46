// CPU reference of causal grouped-query attention over packed sequences.
//
// Work is split by (sequence, head) in the forward and by (sequence, kv head) in the backward,
// where the kv head's dk/dv rows belong to exactly one task, so no two threads write the same row.
// Each query row computes its scores against the visible keys only (causal, and the window when
// one is set) into a small buffer, then a two-pass softmax: max first, then the normaliser.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

namespace {

// Where one (sequence, head) lives: row pointers are base + token * stride.
struct AttentionGeometry {
  int64_t tokens = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0, window = 0;
  float scale = 0;
  int64_t q_stride() const { return heads * head_dim; }
  int64_t kv_stride() const { return kv_heads * head_dim; }
  // The first key a query at position i of its sequence may see.
  int64_t first_visible_key(int64_t i) const {
    return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
  }
};

// omp simd allows the f32 sum to be split across vector lanes, a reordering the compiler may not
// make on its own.
float dot(const float* a, const float* b, int64_t n) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// y += alpha * x
void axpy(float* y, float alpha, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// One query head of one sequence: q/out rows at stride q_stride, k/v rows at stride kv_stride,
// all already offset to the sequence's first token and the right head. lse is that head's
// row of the (H, N) table, offset to the sequence. scores holds one row of visible keys.
void attention_forward_head(float* out, float* lse, const float* q, const float* k, const float* v,
                            int64_t length, const AttentionGeometry& g, float* scores) {
  int64_t D = g.head_dim;
  for (int64_t i = 0; i < length; ++i) {
    const float* q_row = q + i * g.q_stride();
    int64_t first = g.first_visible_key(i), count = i - first + 1;
    float max_score = -INFINITY;
    for (int64_t j = 0; j < count; ++j) {
      scores[j] = g.scale * dot(q_row, k + (first + j) * g.kv_stride(), D);
      max_score = std::max(max_score, scores[j]);
    }
    double normaliser = 0;
    for (int64_t j = 0; j < count; ++j) normaliser += std::exp(double(scores[j] - max_score));
    float row_lse = max_score + float(std::log(normaliser));
    lse[i] = row_lse;
    float* out_row = out + i * g.q_stride();
    std::memset(out_row, 0, sizeof(float) * size_t(D));
    for (int64_t j = 0; j < count; ++j)
      axpy(out_row, std::exp(scores[j] - row_lse), v + (first + j) * g.kv_stride(), D);
  }
}

// The backward of one query head of one sequence, adding into the kv head's dk/dv rows.
void attention_backward_head(float* dq, float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             int64_t length, const AttentionGeometry& g) {
  int64_t D = g.head_dim;
  for (int64_t i = 0; i < length; ++i) {
    const float* q_row = q + i * g.q_stride();
    const float* dout_row = dout + i * g.q_stride();
    float* dq_row = dq + i * g.q_stride();
    // D_i = do . o = sum_j p_j dp_j: the softmax Jacobian's shared term.
    float dout_dot_out = dot(dout_row, out + i * g.q_stride(), D);
    std::memset(dq_row, 0, sizeof(float) * size_t(D));
    for (int64_t j = g.first_visible_key(i); j <= i; ++j) {
      const float* k_row = k + j * g.kv_stride();
      const float* v_row = v + j * g.kv_stride();
      float p = std::exp(g.scale * dot(q_row, k_row, D) - lse[i]);
      float ds = p * (dot(dout_row, v_row, D) - dout_dot_out);
      axpy(dq_row, g.scale * ds, k_row, D);
      axpy(dk + j * g.kv_stride(), g.scale * ds, q_row, D);
      axpy(dv + j * g.kv_stride(), p, dout_row, D);
    }
  }
}

int64_t longest_sequence(const std::vector<int32_t>& cu_seqlens) {
  int64_t longest = 0;
  for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s)
    longest = std::max<int64_t>(longest, cu_seqlens[s + 1] - cu_seqlens[s]);
  return longest;
}

// Checks every argument; returns the geometry shared by forward and backward.
AttentionGeometry attention_check(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse,
                                  const std::vector<int32_t>& cu_seqlens,
                                  const AttentionShape& shape) {
  if (shape.heads <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 || shape.window < 0)
    fail(op, ": bad shape: heads ", shape.heads, ", kv_heads ", shape.kv_heads, ", head_dim ",
         shape.head_dim, ", window ", shape.window);
  if (shape.heads % shape.kv_heads != 0)
    fail(op, ": kv_heads ", shape.kv_heads, " does not divide heads ", shape.heads);
  check_rank(q, 3, op, "q");
  int64_t tokens = q.shape[0];
  check_dims(q, {tokens, shape.heads, shape.head_dim}, op, "q");
  check_dims(out, {tokens, shape.heads, shape.head_dim}, op, "out");
  check_dims(k, {tokens, shape.kv_heads, shape.head_dim}, op, "k");
  check_dims(v, {tokens, shape.kv_heads, shape.head_dim}, op, "v");
  check_dims(lse, {shape.heads, tokens}, op, "lse");
  check_dtype(lse, DType::f32, op, "lse");
  if (cu_seqlens.size() < 2 || cu_seqlens.front() != 0 || cu_seqlens.back() != tokens)
    fail(op, ": cu_seqlens must run from 0 to the token count ", tokens, " (", cu_seqlens.size(),
         " entries)");
  for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s)
    if (cu_seqlens[s + 1] < cu_seqlens[s])
      fail(op, ": cu_seqlens decreases at entry ", s + 1, " (", cu_seqlens[s], " -> ",
           cu_seqlens[s + 1], ")");
  AttentionGeometry g;
  g.tokens = tokens;
  g.heads = shape.heads;
  g.kv_heads = shape.kv_heads;
  g.head_dim = shape.head_dim;
  g.window = shape.window;
  g.scale = float(1.0 / std::sqrt(double(shape.head_dim)));
  return g;
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape) {
  const char* op = "attention_forward";
  Device device = common_device(op, out, lse, q, k, v);
  AttentionGeometry g = attention_check(op, q, k, v, out, lse, cu_seqlens, shape);
  if (device == Device::cuda)
    return CST_ON_CUDA(cuda::attention_forward(out, lse, q, k, v, cu_seqlens, shape));
  check_f32(op, {{&out, "out"}, {&q, "q"}, {&k, "k"}, {&v, "v"}});

  int64_t sequences = int64_t(cu_seqlens.size()) - 1;
  int64_t group = g.heads / g.kv_heads;
  int64_t longest = longest_sequence(cu_seqlens);
#pragma omp parallel
  {
    std::vector<float> scores(size_t(std::max<int64_t>(longest, 1)));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t s = 0; s < sequences; ++s) {
      for (int64_t h = 0; h < g.heads; ++h) {
        int64_t begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
        int64_t kv_head = h / group;
        attention_forward_head(
            out.f32() + begin * g.q_stride() + h * g.head_dim, lse.f32() + h * g.tokens + begin,
            q.f32() + begin * g.q_stride() + h * g.head_dim,
            k.f32() + begin * g.kv_stride() + kv_head * g.head_dim,
            v.f32() + begin * g.kv_stride() + kv_head * g.head_dim, length, g, scores.data());
      }
    }
  }
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const std::vector<int32_t>& cu_seqlens,
                        const AttentionShape& shape) {
  const char* op = "attention_backward";
  Device device = common_device(op, dq, dk, dv, dout, q, k, v, out, lse);
  AttentionGeometry g = attention_check(op, q, k, v, out, lse, cu_seqlens, shape);
  check_dims(dq, {g.tokens, g.heads, g.head_dim}, op, "dq");
  check_dims(dout, {g.tokens, g.heads, g.head_dim}, op, "dout");
  check_dims(dk, {g.tokens, g.kv_heads, g.head_dim}, op, "dk");
  check_dims(dv, {g.tokens, g.kv_heads, g.head_dim}, op, "dv");
  if (device == Device::cuda)
    return CST_ON_CUDA(
        cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape));
  check_f32(op, {{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}});
  check_f32(op, {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}});

  fill_zero(dk);
  fill_zero(dv);
  int64_t sequences = int64_t(cu_seqlens.size()) - 1;
  int64_t group = g.heads / g.kv_heads;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t kv_head = 0; kv_head < g.kv_heads; ++kv_head) {
      int64_t begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
      int64_t kv_offset = begin * g.kv_stride() + kv_head * g.head_dim;
      // The query heads of this group all add into the same dk/dv rows, one after another.
      for (int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
        int64_t q_offset = begin * g.q_stride() + h * g.head_dim;
        attention_backward_head(dq.f32() + q_offset, dk.f32() + kv_offset, dv.f32() + kv_offset,
                                dout.f32() + q_offset, q.f32() + q_offset, k.f32() + kv_offset,
                                v.f32() + kv_offset, out.f32() + q_offset,
                                lse.f32() + h * g.tokens + begin, length, g);
      }
    }
  }
}

}  // namespace cst
