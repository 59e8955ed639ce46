// Tests of the CPU attention against a naive float64 attention that builds every query's full
// score row, masks it and applies an ordinary softmax.
// Pattern and tolerances: tests/op_reference.h.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

using test::f32_tensor;
using test::i32_tensor;
using test::kGradientTolerance;
using test::numeric_gradient;
using test::relative_error;
using test::Rng;
using test::to_double;
using test::to_vector;
using test::weighted_sum;

struct ReferenceAttention {
  std::vector<double> out;  // (N, H, D)
  std::vector<double> lse;  // (H, N)
};

ReferenceAttention reference_attention(const std::vector<double>& q, const std::vector<double>& k,
                                       const std::vector<double>& v,
                                       const std::vector<int32_t>& cu_seqlens,
                                       const AttentionShape& shape) {
  int64_t H = shape.heads, KVH = shape.kv_heads, D = shape.head_dim;
  int64_t N = cu_seqlens.back();
  ReferenceAttention result{std::vector<double>(size_t(N * H * D)),
                            std::vector<double>(size_t(H * N))};
  auto q_at = [&](int64_t t, int64_t h, int64_t d) { return q[size_t((t * H + h) * D + d)]; };
  auto k_at = [&](int64_t t, int64_t g, int64_t d) { return k[size_t((t * KVH + g) * D + d)]; };
  auto v_at = [&](int64_t t, int64_t g, int64_t d) { return v[size_t((t * KVH + g) * D + d)]; };
  for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s) {
    int64_t begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / (H / KVH);
      for (int64_t i = 0; i < length; ++i) {
        std::vector<double> scores(size_t(length), -INFINITY);
        double max_score = -INFINITY;
        for (int64_t j = 0; j < length; ++j) {
          bool visible = j <= i && (shape.window == 0 || j > i - shape.window);
          if (!visible) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q_at(begin + i, h, d) * k_at(begin + j, g, d);
          scores[size_t(j)] = dot / std::sqrt(double(D));
          max_score = std::max(max_score, scores[size_t(j)]);
        }
        double normaliser = 0;
        for (double score : scores) normaliser += std::exp(score - max_score);
        result.lse[size_t(h * N + begin + i)] = max_score + std::log(normaliser);
        for (int64_t d = 0; d < D; ++d) {
          double sum = 0;
          for (int64_t j = 0; j < length; ++j)
            sum += std::exp(scores[size_t(j)] - max_score) / normaliser * v_at(begin + j, g, d);
          result.out[size_t((begin + i) * H * D + h * D + d)] = sum;
        }
      }
    }
  }
  return result;
}

struct AttentionCase {
  const char* name;
  AttentionShape shape;
  std::vector<int32_t> cu_seqlens;
};

void check_attention_case(const AttentionCase& test_case, uint64_t seed) {
  SCOPED_TRACE(test_case.name);
  const AttentionShape& shape = test_case.shape;
  int64_t H = shape.heads, KVH = shape.kv_heads, D = shape.head_dim;
  int64_t N = test_case.cu_seqlens.back();
  Rng rng(seed);
  // Scores of order 1 (|q.k| / sqrt(D) up to ~3) so that softmax rows are neither flat nor one-hot.
  std::vector<float> q_values = rng.floats(N * H * D, -1.5, 1.5);
  std::vector<float> k_values = rng.floats(N * KVH * D, -1.5, 1.5);
  std::vector<float> v_values = rng.floats(N * KVH * D);
  std::vector<float> weights = rng.floats(N * H * D);
  OwnedTensor q = f32_tensor({N, H, D}, q_values), k = f32_tensor({N, KVH, D}, k_values),
              v = f32_tensor({N, KVH, D}, v_values);
  OwnedTensor out({N, H, D}, DType::f32, Device::cpu), lse({H, N}, DType::f32, Device::cpu);
  attention_forward(out, lse, q, k, v, test_case.cu_seqlens, shape);

  ReferenceAttention expected = reference_attention(
      to_double(q_values), to_double(k_values), to_double(v_values), test_case.cu_seqlens, shape);
  // f32 dot products of D terms and softmax sums of at most a sequence's length: ~1e-7 relative.
  EXPECT_LT(relative_error(to_vector(out), expected.out), 1e-5);
  EXPECT_LT(relative_error(to_vector(lse), expected.lse), 1e-5);

  OwnedTensor dout = f32_tensor({N, H, D}, weights);
  OwnedTensor dq({N, H, D}, DType::f32, Device::cpu), dk({N, KVH, D}, DType::f32, Device::cpu),
      dv({N, KVH, D}, DType::f32, Device::cpu);
  // Garbage in the outputs must not leak into the result: they are overwritten, not added to.
  for (const Tensor* t : {&dq.view, &dk.view, &dv.view})
    for (int64_t i = 0; i < t->numel(); ++i) t->f32()[i] = 1e6f;
  attention_backward(dq, dk, dv, dout, q, k, v, out, lse, test_case.cu_seqlens, shape);

  auto loss_of = [&](int which) {
    return [&, which](const std::vector<double>& point) {
      std::vector<double> qd = to_double(q_values), kd = to_double(k_values),
                          vd = to_double(v_values);
      (which == 0 ? qd : which == 1 ? kd : vd) = point;
      return weighted_sum(reference_attention(qd, kd, vd, test_case.cu_seqlens, shape).out,
                          weights);
    };
  };
  EXPECT_LT(relative_error(to_vector(dq), numeric_gradient(loss_of(0), to_double(q_values))),
            kGradientTolerance);
  EXPECT_LT(relative_error(to_vector(dk), numeric_gradient(loss_of(1), to_double(k_values))),
            kGradientTolerance);
  EXPECT_LT(relative_error(to_vector(dv), numeric_gradient(loss_of(2), to_double(v_values))),
            kGradientTolerance);
}

TEST(OpsAttention, CausalPackedSequencesWithoutGrouping) {
  // Lengths 5, 1, 7: a one-token sequence and odd lengths, packed end to end.
  check_attention_case({"ratio 1, causal", {3, 3, 8, 0}, {0, 5, 6, 13}}, 100);
}

TEST(OpsAttention, SlidingWindowShorterThanTheSequenceWithGroupsOfTwo) {
  check_attention_case({"ratio 2, window 3", {4, 2, 6, 3}, {0, 9, 13}}, 101);
}

TEST(OpsAttention, SlidingWindowWithGroupsOfFour) {
  check_attention_case({"ratio 4, window 4", {4, 1, 8, 4}, {0, 1, 12, 18}}, 102);
}

TEST(OpsAttention, WindowLongerThanEverySequenceIsPlainCausal) {
  AttentionShape causal{2, 1, 4, 0}, long_window{2, 1, 4, 50};
  std::vector<int32_t> cu_seqlens = {0, 6, 9};
  Rng rng(103);
  OwnedTensor q = f32_tensor({9, 2, 4}, rng.floats(72)), k = f32_tensor({9, 1, 4}, rng.floats(36)),
              v = f32_tensor({9, 1, 4}, rng.floats(36));
  OwnedTensor out_causal({9, 2, 4}, DType::f32, Device::cpu),
      out_window({9, 2, 4}, DType::f32, Device::cpu);
  OwnedTensor lse({2, 9}, DType::f32, Device::cpu);
  attention_forward(out_causal, lse, q, k, v, cu_seqlens, causal);
  attention_forward(out_window, lse, q, k, v, cu_seqlens, long_window);
  EXPECT_EQ(to_vector(out_causal), to_vector(out_window));
}

TEST(OpsAttention, BadShapesAndOffsetsAreErrors) {
  OwnedTensor q({6, 3, 4}, DType::f32, Device::cpu), k({6, 2, 4}, DType::f32, Device::cpu),
      v({6, 2, 4}, DType::f32, Device::cpu), out({6, 3, 4}, DType::f32, Device::cpu),
      lse({3, 6}, DType::f32, Device::cpu);
  EXPECT_THROW(attention_forward(out, lse, q, k, v, {0, 6}, {3, 2, 4, 0}), Error);  // 2 !| 3
  OwnedTensor k1({6, 1, 4}, DType::f32, Device::cpu), v1({6, 1, 4}, DType::f32, Device::cpu);
  EXPECT_NO_THROW(attention_forward(out, lse, q, k1, v1, {0, 2, 6}, {3, 1, 4, 0}));
  EXPECT_THROW(attention_forward(out, lse, q, k1, v1, {0, 2, 5}, {3, 1, 4, 0}), Error);  // != N
  EXPECT_THROW(attention_forward(out, lse, q, k1, v1, {0, 4, 2, 6}, {3, 1, 4, 0}), Error);
  EXPECT_THROW(attention_forward(out, lse, q, k1, v1, {0, 6}, {3, 1, 5, 0}), Error);  // D
}

// Decoding: sequences of lengths 5, 1 and 9 stored in a cache of 12 rows per sequence, whose
// unused rows hold NaN (any read of them shows in the output). The new tokens are the last token
// of each sequence, plus the three before it in the third (a piece of several tokens); each must
// get the output the full attention gives that position.
void check_decode_case(const AttentionShape& shape, uint64_t seed) {
  const int64_t H = shape.heads, KVH = shape.kv_heads, D = shape.head_dim, capacity = 12;
  const std::vector<int32_t> cu_seqlens = {0, 5, 6, 15};
  const int64_t N = cu_seqlens.back(), sequences = int64_t(cu_seqlens.size()) - 1;
  Rng rng(seed);
  const std::vector<float> q_values = rng.floats(N * H * D, -1.5, 1.5);
  const std::vector<float> k_values = rng.floats(N * KVH * D, -1.5, 1.5);
  const std::vector<float> v_values = rng.floats(N * KVH * D);
  const ReferenceAttention expected = reference_attention(
      to_double(q_values), to_double(k_values), to_double(v_values), cu_seqlens, shape);

  const int64_t row_width = KVH * D;
  std::vector<float> k_cache(size_t(sequences * capacity * row_width), NAN), v_cache = k_cache;
  for (int64_t s = 0; s < sequences; ++s)
    for (int64_t t = cu_seqlens[size_t(s)]; t < cu_seqlens[size_t(s) + 1]; ++t) {
      const int64_t row = s * capacity + (t - cu_seqlens[size_t(s)]);
      std::copy_n(k_values.begin() + t * row_width, row_width, k_cache.begin() + row * row_width);
      std::copy_n(v_values.begin() + t * row_width, row_width, v_cache.begin() + row * row_width);
    }
  const std::vector<int64_t> new_tokens = {4, 5, 11, 12, 13, 14};  // indices into the packed batch
  std::vector<float> q_new;
  std::vector<int32_t> rows, positions;
  std::vector<double> expected_out;
  for (int64_t t : new_tokens) {
    const int64_t s = t < 5 ? 0 : t < 6 ? 1 : 2, position = t - cu_seqlens[size_t(s)];
    rows.push_back(int32_t(s * capacity + position));
    positions.push_back(int32_t(position));
    q_new.insert(q_new.end(), q_values.begin() + t * H * D, q_values.begin() + (t + 1) * H * D);
    expected_out.insert(expected_out.end(), expected.out.begin() + t * H * D, expected.out.begin() + (t + 1) * H * D);
  }
  const int64_t n = int64_t(new_tokens.size());
  OwnedTensor q = f32_tensor({n, H, D}, q_new), out({n, H, D}, DType::f32, Device::cpu);
  OwnedTensor keys = f32_tensor({sequences * capacity, KVH, D}, k_cache);
  OwnedTensor values = f32_tensor({sequences * capacity, KVH, D}, v_cache);
  attention_decode(out, q, keys, values, i32_tensor({n}, rows), i32_tensor({n}, positions), shape);
  // As the forward: f32 dot products of D terms and sums over at most 9 keys, ~1e-7 relative.
  EXPECT_LT(relative_error(to_vector(out), expected_out), 1e-5);

  // A token whose sequence would start before the cache's first row, or end past its last.
  positions[0] = rows[0] + 1;
  EXPECT_THROW(attention_decode(out, q, keys, values, i32_tensor({n}, rows), i32_tensor({n}, positions), shape),
               Error);
  positions[0] = 0;
  rows[0] = int32_t(sequences * capacity);
  EXPECT_THROW(attention_decode(out, q, keys, values, i32_tensor({n}, rows), i32_tensor({n}, positions), shape),
               Error);
}

TEST(OpsAttention, DecodeReadsOnlyItsOwnSequencesCache) {
  check_decode_case({2, 2, 8, 0}, 104);
  check_decode_case({4, 2, 8, 3}, 105);  // a window shorter than the longest sequence, groups of 2
  check_decode_case({4, 1, 4, 0}, 106);  // groups of 4
}

}  // namespace
}  // namespace cst
