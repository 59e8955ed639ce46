// CPU reference of causal grouped-query attention over packed sequences.
//
// Work is split by (sequence, head) in the forward and by (sequence, kv head) in the backward,
// where the kv head's dk/dv rows belong to exactly one task, so no two threads write the same row.
// A task copies its head's rows into contiguous tiles and walks the queries in blocks of
// kQueryBlock: one GEMM gives the block's scores against every key the block can see, a row pass
// turns them into probabilities (exact softmax: each row holds all its visible keys), and one more
// GEMM applies them to V. The backward recomputes the probabilities from the saved lse the same
// way and gets dq, dk and dv from three GEMMs per block. The GEMMs run on the task's own thread
// (matmul inside a parallel loop does not split further).
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/op_checks.h"
#include "kernels/vector_math.h"

namespace cst {

namespace {

// Queries per block: the block's scores (kQueryBlock x visible keys) stay in cache, and keys
// past the block's last query, invisible to all of it, are never scored.
constexpr int64_t kQueryBlock = 64;

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

// A (rows, cols) view of contiguous host memory, for matmul (which only writes its output;
// views carry no const).
Tensor matrix(const float* data, int64_t rows, int64_t cols) {
  return make_view(const_cast<float*>(data), {rows, cols}, DType::f32, Device::cpu);
}

// Copies `rows` rows of `width` floats, `stride` apart, into a contiguous tile, and back.
void gather_rows(float* tile, const float* source, int64_t rows, int64_t width, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(tile + r * width, source + r * stride, sizeof(float) * size_t(width));
}
void scatter_rows(float* destination, const float* tile, int64_t rows, int64_t width,
                  int64_t stride) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(destination + r * stride, tile + r * width, sizeof(float) * size_t(width));
}

// One thread's tiles, sized for the longest sequence.
struct HeadScratch {
  std::vector<float> q, k, v, dout, dk, dv;     // (length, D)
  std::vector<float> block_out;                 // (kQueryBlock, D): out or dq rows of a block
  std::vector<float> scores, dscores;           // (kQueryBlock, length)
  HeadScratch(int64_t longest, int64_t head_dim)
      : q(size_t(longest * head_dim)), k(q.size()), v(q.size()), dout(q.size()), dk(q.size()),
        dv(q.size()), block_out(size_t(kQueryBlock * head_dim)),
        scores(size_t(kQueryBlock * longest)), dscores(scores.size()) {}
};

// The keys a query block [first_query, end_query) scores: from the first key its first query
// sees up to its last query. Row r of the block sees the part [visible_begin, visible_end).
struct BlockKeys {
  int64_t first = 0, count = 0;
  int64_t visible_begin(const AttentionGeometry& g, int64_t query) const {
    return g.first_visible_key(query) - first;
  }
  int64_t visible_end(int64_t query) const { return query + 1 - first; }
};

BlockKeys block_keys(const AttentionGeometry& g, int64_t first_query, int64_t end_query) {
  int64_t first = g.first_visible_key(first_query);
  return {first, end_query - first};
}

// scores (rows, keys) = scale * q_block k_block^T for the block's queries and keys.
void block_scores(float* scores, const float* q_tile, const float* k_tile, int64_t first_query,
                  int64_t rows, const BlockKeys& keys, const AttentionGeometry& g) {
  int64_t D = g.head_dim;
  matmul(matrix(scores, rows, keys.count), matrix(q_tile + first_query * D, rows, D),
         matrix(k_tile + keys.first * D, keys.count, D), false, true, g.scale);
}

// p_j = exp(s_j - lse) over the visible part [begin, end) of a row of scores, 0 elsewhere.
CST_WIDE_VECTORS void probabilities_row(float* scores, int64_t count, int64_t begin, int64_t end,
                                        float row_lse) {
  std::fill(scores, scores + begin, 0.0f);
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) scores[j] = vector_exp(scores[j] - row_lse);
  std::fill(scores + end, scores + count, 0.0f);
}

// Softmax of one row of scores over its visible part [begin, end), in place; the invisible
// entries become 0. Returns the row's lse.
CST_WIDE_VECTORS float softmax_row(float* scores, int64_t count, int64_t begin, int64_t end) {
  float max_score = -INFINITY;
#pragma omp simd reduction(max : max_score)
  for (int64_t j = begin; j < end; ++j) max_score = vector_max(max_score, scores[j]);
  double normaliser = 0;
#pragma omp simd reduction(+ : normaliser)
  for (int64_t j = begin; j < end; ++j) {
    scores[j] = vector_exp(scores[j] - max_score);
    normaliser += scores[j];
  }
  float inverse_normaliser = float(1.0 / normaliser);
  std::fill(scores, scores + begin, 0.0f);
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) scores[j] *= inverse_normaliser;
  std::fill(scores + end, scores + count, 0.0f);
  return max_score + float(std::log(normaliser));
}

// ds_j = p_j (dp_j - D_i), written over the row of dp.
CST_WIDE_VECTORS void score_gradients_row(float* dp, const float* p, int64_t count,
                                          float dout_dot_out) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) dp[j] = p[j] * (dp[j] - dout_dot_out);
}

// One query head of one sequence: q/out rows at stride q_stride, k/v rows at stride kv_stride,
// all already offset to the sequence's first token and the right head. lse is that head's
// row of the (H, N) table, offset to the sequence.
void attention_forward_head(float* out, float* lse, const float* q, const float* k, const float* v,
                            int64_t length, const AttentionGeometry& g, HeadScratch& scratch) {
  int64_t D = g.head_dim;
  gather_rows(scratch.q.data(), q, length, D, g.q_stride());
  gather_rows(scratch.k.data(), k, length, D, g.kv_stride());
  gather_rows(scratch.v.data(), v, length, D, g.kv_stride());
  for (int64_t first_query = 0; first_query < length; first_query += kQueryBlock) {
    int64_t end_query = std::min(first_query + kQueryBlock, length), rows = end_query - first_query;
    BlockKeys keys = block_keys(g, first_query, end_query);
    float* scores = scratch.scores.data();
    block_scores(scores, scratch.q.data(), scratch.k.data(), first_query, rows, keys, g);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t i = first_query + r;
      lse[i] = softmax_row(scores + r * keys.count, keys.count, keys.visible_begin(g, i),
                           keys.visible_end(i));
    }
    // out_block = P v_block
    matmul(matrix(scratch.block_out.data(), rows, D), matrix(scores, rows, keys.count),
           matrix(scratch.v.data() + keys.first * D, keys.count, D), false, false);
    scatter_rows(out + first_query * g.q_stride(), scratch.block_out.data(), rows, D, g.q_stride());
  }
}

// The backward of one query head of one sequence (pointers as in the forward), adding into the
// kv head's tiles scratch.dk and scratch.dv; scratch.k and scratch.v already hold its keys and
// values.
void attention_backward_head(float* dq, const float* dout, const float* q, const float* out,
                             const float* lse, int64_t length, const AttentionGeometry& g,
                             HeadScratch& scratch) {
  int64_t D = g.head_dim;
  gather_rows(scratch.q.data(), q, length, D, g.q_stride());
  gather_rows(scratch.dout.data(), dout, length, D, g.q_stride());
  for (int64_t first_query = 0; first_query < length; first_query += kQueryBlock) {
    int64_t end_query = std::min(first_query + kQueryBlock, length), rows = end_query - first_query;
    BlockKeys keys = block_keys(g, first_query, end_query);
    float* probabilities = scratch.scores.data();
    float* dscores = scratch.dscores.data();
    const float* q_block = scratch.q.data() + first_query * D;
    const float* dout_block = scratch.dout.data() + first_query * D;
    block_scores(probabilities, scratch.q.data(), scratch.k.data(), first_query, rows, keys, g);
    // dp = do_block v_block^T
    matmul(matrix(dscores, rows, keys.count), matrix(dout_block, rows, D),
           matrix(scratch.v.data() + keys.first * D, keys.count, D), false, true);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t i = first_query + r;
      float* p = probabilities + r * keys.count;
      float* ds = dscores + r * keys.count;
      probabilities_row(p, keys.count, keys.visible_begin(g, i), keys.visible_end(i), lse[i]);
      // D_i = do . o = sum_j p_j dp_j: the softmax Jacobian's shared term.
      float dout_dot_out = dot(dout + i * g.q_stride(), out + i * g.q_stride(), D);
      score_gradients_row(ds, p, keys.count, dout_dot_out);
    }
    // dq_block = scale ds k_block;  dk_block += scale ds^T q_block;  dv_block += p^T do_block
    Tensor k_block = matrix(scratch.k.data() + keys.first * D, keys.count, D);
    matmul(matrix(scratch.block_out.data(), rows, D), matrix(dscores, rows, keys.count), k_block,
           false, false, g.scale);
    scatter_rows(dq + first_query * g.q_stride(), scratch.block_out.data(), rows, D, g.q_stride());
    matmul(matrix(scratch.dk.data() + keys.first * D, keys.count, D),
           matrix(dscores, rows, keys.count), matrix(q_block, rows, D), true, false, g.scale, 1.0f);
    matmul(matrix(scratch.dv.data() + keys.first * D, keys.count, D),
           matrix(probabilities, rows, keys.count), matrix(dout_block, rows, D), true, false, 1.0f,
           1.0f);
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
  int64_t longest = std::max<int64_t>(longest_sequence(cu_seqlens), 1);
#pragma omp parallel
  {
    HeadScratch scratch(longest, g.head_dim);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t s = 0; s < sequences; ++s) {
      for (int64_t h = 0; h < g.heads; ++h) {
        int64_t begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
        int64_t kv_head = h / group;
        attention_forward_head(
            out.f32() + begin * g.q_stride() + h * g.head_dim, lse.f32() + h * g.tokens + begin,
            q.f32() + begin * g.q_stride() + h * g.head_dim,
            k.f32() + begin * g.kv_stride() + kv_head * g.head_dim,
            v.f32() + begin * g.kv_stride() + kv_head * g.head_dim, length, g, scratch);
      }
    }
  }
}

constexpr AttentionBackward kAttentionBackwards[] = {
    AttentionBackward::recompute_dq, AttentionBackward::ordered_dq, AttentionBackward::atomic_dq};

const char* attention_backward_name(AttentionBackward mode) {
  switch (mode) {
    case AttentionBackward::recompute_dq: return "recompute_dq";
    case AttentionBackward::ordered_dq: return "ordered_dq";
    case AttentionBackward::atomic_dq: return "atomic_dq";
  }
  fail("attention_backward_name: no such mode");
}

AttentionBackward attention_backward_by_name(const std::string& name, const char* what) {
  for (AttentionBackward mode : kAttentionBackwards)
    if (name == attention_backward_name(mode)) return mode;
  fail(what, ": expected recompute_dq, ordered_dq or atomic_dq, got '", name, "'");
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const std::vector<int32_t>& cu_seqlens,
                        const AttentionShape& shape, AttentionBackward mode) {
  const char* op = "attention_backward";
  Device device = common_device(op, dq, dk, dv, dout, q, k, v, out, lse);
  AttentionGeometry g = attention_check(op, q, k, v, out, lse, cu_seqlens, shape);
  check_dims(dq, {g.tokens, g.heads, g.head_dim}, op, "dq");
  check_dims(dout, {g.tokens, g.heads, g.head_dim}, op, "dout");
  check_dims(dk, {g.tokens, g.kv_heads, g.head_dim}, op, "dk");
  check_dims(dv, {g.tokens, g.kv_heads, g.head_dim}, op, "dv");
  if (device == Device::cuda)
    return CST_ON_CUDA(
        cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape, mode));
  check_f32(op, {{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}});
  check_f32(op, {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}});

  int64_t sequences = int64_t(cu_seqlens.size()) - 1;
  int64_t group = g.heads / g.kv_heads;
  int64_t longest = std::max<int64_t>(longest_sequence(cu_seqlens), 1);
  int64_t D = g.head_dim;
#pragma omp parallel
  {
    HeadScratch scratch(longest, D);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t s = 0; s < sequences; ++s) {
      for (int64_t kv_head = 0; kv_head < g.kv_heads; ++kv_head) {
        int64_t begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
        int64_t kv_offset = begin * g.kv_stride() + kv_head * D;
        gather_rows(scratch.k.data(), k.f32() + kv_offset, length, D, g.kv_stride());
        gather_rows(scratch.v.data(), v.f32() + kv_offset, length, D, g.kv_stride());
        std::fill(scratch.dk.begin(), scratch.dk.end(), 0.0f);
        std::fill(scratch.dv.begin(), scratch.dv.end(), 0.0f);
        // The query heads of this group all add into the same dk/dv tiles, one after another.
        for (int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
          int64_t q_offset = begin * g.q_stride() + h * D;
          attention_backward_head(dq.f32() + q_offset, dout.f32() + q_offset, q.f32() + q_offset,
                                  out.f32() + q_offset, lse.f32() + h * g.tokens + begin, length,
                                  g, scratch);
        }
        scatter_rows(dk.f32() + kv_offset, scratch.dk.data(), length, D, g.kv_stride());
        scatter_rows(dv.f32() + kv_offset, scratch.dv.data(), length, D, g.kv_stride());
      }
    }
  }
}

}  // namespace cst
