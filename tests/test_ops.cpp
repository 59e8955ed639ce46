// Tests of the small CPU ops: matmul, embedding, rmsnorm, rope, swiglu, the elementwise ops and
// dropout, AdamW, and the argument checks shared by every op.
// Pattern and tolerances: tests/op_reference.h.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
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

// ---------------------------------------------------------------- matmul

// out = alpha op(a) op(b) + beta out, a (M, K) or (K, M), b (K, N) or (N, K), row-major.
std::vector<double> reference_matmul(const std::vector<double>& a, const std::vector<double>& b,
                                     const std::vector<double>& out_before, int64_t M, int64_t N,
                                     int64_t K, bool transpose_a, bool transpose_b, double alpha,
                                     double beta) {
  std::vector<double> out(size_t(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        double a_ik = transpose_a ? a[size_t(k * M + i)] : a[size_t(i * K + k)];
        double b_kj = transpose_b ? b[size_t(j * K + k)] : b[size_t(k * N + j)];
        sum += a_ik * b_kj;
      }
      out[size_t(i * N + j)] = alpha * sum + beta * out_before[size_t(i * N + j)];
    }
  return out;
}

// A one-row product (a decoding step) runs as sgemv, split over the threads by output columns once
// the matrix is large enough: every transpose, a column count that leaves a short last block.
TEST(OpsGemm, OneRowProductsSplitOverThreadsMatchFloat64) {
  const int64_t M = 1, N = 300, K = 130;  // 39000 multiply-adds: past the split threshold
  const float alpha = 0.7f, beta = 0.3f;
  const int threads_before = omp_get_max_threads();
  omp_set_num_threads(2);
  for (bool transpose_a : {false, true}) {
    for (bool transpose_b : {false, true}) {
      SCOPED_TRACE(testing::Message() << "transpose_a " << transpose_a << " transpose_b " << transpose_b);
      Rng rng(30 + 2 * transpose_a + transpose_b);
      std::vector<float> a_values = rng.floats(M * K), b_values = rng.floats(K * N), out_before = rng.floats(M * N);
      OwnedTensor a = transpose_a ? f32_tensor({K, M}, a_values) : f32_tensor({M, K}, a_values);
      OwnedTensor b = transpose_b ? f32_tensor({N, K}, b_values) : f32_tensor({K, N}, b_values);
      OwnedTensor out = f32_tensor({M, N}, out_before);
      matmul(out, a, b, transpose_a, transpose_b, alpha, beta);
      // K = 130 f32 products per output: rounding near 1e-6 relative, so 1e-5 still catches a
      // block that is misplaced or left out.
      EXPECT_LT(relative_error(to_vector(out), reference_matmul(to_double(a_values), to_double(b_values),
                                                                 to_double(out_before), M, N, K, transpose_a,
                                                                 transpose_b, alpha, beta)),
                1e-5);
    }
  }
  omp_set_num_threads(threads_before);
}

TEST(OpsGemm, AllTransposesWithAlphaBetaMatchFloat64AndTheirGradients) {
  const int64_t M = 7, N = 5, K = 9;
  const float alpha = 0.7f, beta = 0.3f;
  for (bool transpose_a : {false, true}) {
    for (bool transpose_b : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "transpose_a " << transpose_a << " transpose_b " << transpose_b);
      Rng rng(10 + 2 * transpose_a + transpose_b);
      std::vector<float> a_values = rng.floats(M * K), b_values = rng.floats(K * N);
      std::vector<float> out_before = rng.floats(M * N), weights = rng.floats(M * N);
      OwnedTensor a = transpose_a ? f32_tensor({K, M}, a_values) : f32_tensor({M, K}, a_values);
      OwnedTensor b = transpose_b ? f32_tensor({N, K}, b_values) : f32_tensor({K, N}, b_values);
      OwnedTensor out = f32_tensor({M, N}, out_before);
      matmul(out, a, b, transpose_a, transpose_b, alpha, beta);
      std::vector<double> expected =
          reference_matmul(to_double(a_values), to_double(b_values), to_double(out_before), M, N, K,
                           transpose_a, transpose_b, alpha, beta);
      // K = 9 f32 products: a few ulps (1e-7) of rounding, so 1e-5 is generous yet tight.
      EXPECT_LT(relative_error(to_vector(out), expected), 1e-5);

      // The backward of a linear layer is two more matmuls; check them as the model uses them.
      OwnedTensor R = f32_tensor({M, N}, weights);
      OwnedTensor da = transpose_a ? OwnedTensor({K, M}, DType::f32, Device::cpu)
                                   : OwnedTensor({M, K}, DType::f32, Device::cpu);
      OwnedTensor db = transpose_b ? OwnedTensor({N, K}, DType::f32, Device::cpu)
                                   : OwnedTensor({K, N}, DType::f32, Device::cpu);
      if (transpose_a)
        matmul(da, b, R, transpose_b, true, alpha);  // da = alpha op(b) R^T
      else
        matmul(da, R, b, false, !transpose_b, alpha);  // da = alpha R op(b)^T
      if (transpose_b)
        matmul(db, R, a, true, transpose_a, alpha);  // db = alpha R^T op(a)
      else
        matmul(db, a, R, !transpose_a, false, alpha);  // db = alpha op(a)^T R
      auto loss_of_a = [&](const std::vector<double>& a_point) {
        return weighted_sum(reference_matmul(a_point, to_double(b_values), to_double(out_before), M,
                                             N, K, transpose_a, transpose_b, alpha, beta),
                            weights);
      };
      auto loss_of_b = [&](const std::vector<double>& b_point) {
        return weighted_sum(reference_matmul(to_double(a_values), b_point, to_double(out_before), M,
                                             N, K, transpose_a, transpose_b, alpha, beta),
                            weights);
      };
      EXPECT_LT(relative_error(to_vector(da), numeric_gradient(loss_of_a, to_double(a_values))),
                kGradientTolerance);
      EXPECT_LT(relative_error(to_vector(db), numeric_gradient(loss_of_b, to_double(b_values))),
                kGradientTolerance);
    }
  }
}

// ---------------------------------------------------------------- embedding

TEST(OpsEmbedding, GathersRowsAndRejectsIdsOutsideTheVocabulary) {
  const int64_t V = 11, C = 6;
  Rng rng(20);
  std::vector<float> table_values = rng.floats(V * C);
  OwnedTensor table = f32_tensor({V, C}, table_values);
  std::vector<int32_t> ids = {3, 0, 10, 3, 7};
  OwnedTensor id_tensor = i32_tensor({5}, ids);
  OwnedTensor out({5, C}, DType::f32, Device::cpu);
  embedding_forward(out, id_tensor, table);
  for (size_t n = 0; n < ids.size(); ++n)
    for (int64_t c = 0; c < C; ++c)
      EXPECT_EQ(out->f32()[n * C + c], table_values[size_t(ids[n] * C + c)]);

  OwnedTensor bad_ids = i32_tensor({2}, {1, 11});
  OwnedTensor bad_out({2, C}, DType::f32, Device::cpu);
  EXPECT_THROW(embedding_forward(bad_out, bad_ids, table), Error);
  OwnedTensor negative_ids = i32_tensor({2}, {-1, 1});
  EXPECT_THROW(embedding_forward(bad_out, negative_ids, table), Error);
}

TEST(OpsEmbedding, ScatterWritesRowsAtTheIdsAndLeavesTheRest) {
  const int64_t R = 9, C = 5;
  Rng rng(21);
  std::vector<float> table_values = rng.floats(R * C), row_values = rng.floats(3 * C);
  OwnedTensor table = f32_tensor({R, C}, table_values);
  const std::vector<int32_t> ids = {8, 0, 4};
  scatter_rows(table, i32_tensor({3}, ids), f32_tensor({3, C}, row_values));
  std::vector<float> expected = table_values;
  for (size_t n = 0; n < ids.size(); ++n)
    std::copy_n(row_values.begin() + int64_t(n) * C, C, expected.begin() + ids[n] * C);
  EXPECT_EQ(to_vector(table), expected);

  OwnedTensor rows = f32_tensor({2, C}, rng.floats(2 * C));
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{1, 9}, std::vector<int32_t>{-1, 1}}) {
    EXPECT_THROW(scatter_rows(table, i32_tensor({2}, bad), rows), Error);
    EXPECT_EQ(to_vector(table), expected) << "a bad id must leave the table untouched";
  }
}

// ---------------------------------------------------------------- rmsnorm

std::vector<double> reference_rmsnorm(const std::vector<double>& x, const std::vector<double>& w,
                                      int64_t rows, int64_t channels, double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean_square = 0;
    for (int64_t c = 0; c < channels; ++c)
      mean_square += x[size_t(r * channels + c)] * x[size_t(r * channels + c)];
    mean_square /= double(channels);
    double scale = 1 / std::sqrt(mean_square + eps);
    for (int64_t c = 0; c < channels; ++c)
      out[size_t(r * channels + c)] = w[size_t(c)] * x[size_t(r * channels + c)] * scale;
  }
  return out;
}

TEST(OpsRmsnorm, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int64_t N = 7, C = 12;
  const float eps = 1e-5f;
  Rng rng(30);
  std::vector<float> x_values = rng.floats(N * C, -2, 2), w_values = rng.floats(C, 0.5, 1.5);
  std::vector<float> weights = rng.floats(N * C);
  OwnedTensor x = f32_tensor({N, C}, x_values), w = f32_tensor({C}, w_values);
  OwnedTensor out({N, C}, DType::f32, Device::cpu), rstd({N}, DType::f32, Device::cpu);
  rmsnorm_forward(out, rstd, x, w, eps);
  EXPECT_LT(relative_error(to_vector(out),
                           reference_rmsnorm(to_double(x_values), to_double(w_values), N, C, eps)),
            1e-6);

  OwnedTensor dout = f32_tensor({N, C}, weights), dx({N, C}, DType::f32, Device::cpu);
  // dweight accumulates: start it from known values and subtract them afterwards.
  std::vector<float> dweight_before = rng.floats(C);
  OwnedTensor dweight = f32_tensor({C}, dweight_before);
  rmsnorm_backward(dx, dweight, dout, x, w, rstd);
  std::vector<float> dweight_added = to_vector(dweight);
  for (int64_t c = 0; c < C; ++c) dweight_added[size_t(c)] -= dweight_before[size_t(c)];

  auto loss_of_x = [&](const std::vector<double>& point) {
    return weighted_sum(reference_rmsnorm(point, to_double(w_values), N, C, eps), weights);
  };
  auto loss_of_w = [&](const std::vector<double>& point) {
    return weighted_sum(reference_rmsnorm(to_double(x_values), point, N, C, eps), weights);
  };
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(loss_of_x, to_double(x_values))),
            kGradientTolerance);
  EXPECT_LT(relative_error(dweight_added, numeric_gradient(loss_of_w, to_double(w_values))),
            kGradientTolerance);

  // An empty dweight skips the weight gradient and still produces dx.
  OwnedTensor dx_only({N, C}, DType::f32, Device::cpu);
  rmsnorm_backward(dx_only, Tensor{}, dout, x, w, rstd);
  EXPECT_EQ(to_vector(dx_only), to_vector(dx));
}

// ---------------------------------------------------------------- rope

// Rotation of pairs (i, i + D/2) by position * inverse_frequencies[i], all in double.
std::vector<double> reference_rope(const std::vector<double>& x,
                                   const std::vector<int32_t>& positions, int64_t heads,
                                   int64_t head_dim, const std::vector<double>& inverse_frequencies) {
  std::vector<double> out(x.size());
  int64_t half = head_dim / 2;
  for (size_t n = 0; n < positions.size(); ++n)
    for (int64_t h = 0; h < heads; ++h) {
      size_t base = (n * size_t(heads) + size_t(h)) * size_t(head_dim);
      for (int64_t i = 0; i < half; ++i) {
        double angle = positions[n] * inverse_frequencies[size_t(i)];
        double first = x[base + size_t(i)], second = x[base + size_t(i + half)];
        out[base + size_t(i)] = first * std::cos(angle) - second * std::sin(angle);
        out[base + size_t(i + half)] = second * std::cos(angle) + first * std::sin(angle);
      }
    }
  return out;
}

// theta^(-2i/D), then scaled as kernels/rope.h writes the linear and llama3 rules, in double.
std::vector<double> reference_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling) {
  std::vector<double> result;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    double inverse_frequency = std::pow(theta, -2.0 * double(i) / double(head_dim));
    if (scaling.type == RopeScalingType::linear) inverse_frequency /= scaling.factor;
    if (scaling.type == RopeScalingType::llama3) {
      double wavelength = 2 * std::numbers::pi / inverse_frequency, context = scaling.original_max_position_embeddings;
      double smooth = (context / wavelength - scaling.low_freq_factor) /
                      (scaling.high_freq_factor - scaling.low_freq_factor);
      if (wavelength > context / scaling.low_freq_factor)
        inverse_frequency /= scaling.factor;
      else if (wavelength >= context / scaling.high_freq_factor)
        inverse_frequency = (1 - smooth) * inverse_frequency / scaling.factor + smooth * inverse_frequency;
    }
    result.push_back(inverse_frequency);
  }
  return result;
}

RopeScaling llama3_scaling(double factor, double low, double high, int context) {
  RopeScaling scaling;
  scaling.type = RopeScalingType::llama3;
  scaling.factor = factor;
  scaling.low_freq_factor = low;
  scaling.high_freq_factor = high;
  scaling.original_max_position_embeddings = context;
  return scaling;
}

TEST(OpsRope, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int64_t N = 7, H = 3, D = 10;
  const float theta = 10000.0f;
  const std::vector<double> frequencies = reference_inverse_frequencies(D, theta, RopeScaling{});
  Rng rng(40);
  std::vector<float> x_values = rng.floats(N * H * D), weights = rng.floats(N * H * D);
  std::vector<int32_t> positions = {0, 1, 2, 17, 5, 40, 3};
  OwnedTensor x = f32_tensor({N, H, D}, x_values), position_tensor = i32_tensor({N}, positions);
  OwnedTensor inverse_frequencies = rope_inverse_frequencies(D, theta, RopeScaling{}, Device::cpu);
  rope_forward(x, position_tensor, inverse_frequencies);
  // The kernel's f32 angle (position * f32 inv_freq) is off by up to ~40 * 6e-8 rad here.
  EXPECT_LT(relative_error(to_vector(x), reference_rope(to_double(x_values), positions, H, D, frequencies)),
            1e-5);

  OwnedTensor dx = f32_tensor({N, H, D}, weights);
  rope_backward(dx, position_tensor, inverse_frequencies);
  auto loss = [&](const std::vector<double>& point) {
    return weighted_sum(reference_rope(point, positions, H, D, frequencies), weights);
  };
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(loss, to_double(x_values))),
            kGradientTolerance);
}

// The scaling rules against their float64 transcription (exactness against transformers' f32
// arithmetic is tests/test_transformer_golden.cpp's job). Each llama3 case has frequencies in all
// three bands, none within 0.2% of a band edge, so f32 rounding cannot move one across.
TEST(OpsRope, ScaledInverseFrequenciesFollowTheRules) {
  RopeScaling linear;
  linear.type = RopeScalingType::linear;
  linear.factor = 4.0;
  struct Case {
    int64_t head_dim;
    double theta;
    RopeScaling scaling;
  } cases[] = {{16, 10000.0, linear},
               {128, 500000.0, llama3_scaling(8.0, 1.0, 4.0, 8192)},   // Llama 3.1
               {64, 500000.0, llama3_scaling(32.0, 1.0, 4.0, 8192)},   // Llama 3.2 1B
               {16, 500000.0, llama3_scaling(8.0, 1.0, 16.0, 1024)}};  // the golden tiny model
  for (const Case& test_case : cases) {
    SCOPED_TRACE(testing::Message() << rope_scaling_type_name(test_case.scaling.type) << " head_dim "
                                    << test_case.head_dim);
    std::vector<double> expected =
        reference_inverse_frequencies(test_case.head_dim, test_case.theta, test_case.scaling);
    std::vector<double> unscaled = reference_inverse_frequencies(test_case.head_dim, test_case.theta, RopeScaling{});
    std::vector<float> actual =
        to_vector(rope_inverse_frequencies(test_case.head_dim, float(test_case.theta), test_case.scaling, Device::cpu));
    int kept = 0, divided = 0, smoothed = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_NEAR(actual[i], expected[i], 1e-6 * expected[i]) << "pair " << i;
      double ratio = expected[i] / unscaled[i];
      if (std::abs(ratio - 1) < 1e-9) ++kept;
      else if (std::abs(ratio * test_case.scaling.factor - 1) < 1e-9) ++divided;
      else ++smoothed;
    }
    if (test_case.scaling.type == RopeScalingType::llama3) {
      EXPECT_GT(kept, 0);
      EXPECT_GT(divided, 0);
      EXPECT_GT(smoothed, 0);
    } else {
      EXPECT_EQ(divided, int(expected.size()));
    }
  }
}

TEST(OpsRope, RefusesMismatchedArguments) {
  OwnedTensor one_position = i32_tensor({1}, {0});
  OwnedTensor odd = f32_tensor({1, 1, 3}, {1, 2, 3});
  OwnedTensor one_pair = f32_tensor({1}, {1.0f});
  EXPECT_THROW(rope_forward(odd, one_position, one_pair), Error);
  EXPECT_THROW(rope_inverse_frequencies(3, 10000.0f, RopeScaling{}, Device::cpu), Error);
  OwnedTensor x = f32_tensor({1, 1, 4}, {1, 2, 3, 4});
  EXPECT_THROW(rope_forward(x, one_position, one_pair), Error);  // 2 pairs, 1 frequency
  OwnedTensor integer_pairs = i32_tensor({2}, {1, 1});
  EXPECT_THROW(rope_backward(x, one_position, integer_pairs), Error);
  OwnedTensor two_pairs = rope_inverse_frequencies(4, 10000.0f, RopeScaling{}, Device::cpu);
  rope_forward(x, one_position, two_pairs);  // position 0: the identity
  EXPECT_EQ(to_vector(x), (std::vector<float>{1, 2, 3, 4}));
}

// ---------------------------------------------------------------- swiglu

std::vector<double> reference_swiglu(const std::vector<double>& gate,
                                     const std::vector<double>& up) {
  std::vector<double> out(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) out[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
  return out;
}

TEST(OpsSwiglu, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int64_t N = 5, F = 13;
  Rng rng(50);
  std::vector<float> gate_values = rng.floats(N * F, -6, 6), up_values = rng.floats(N * F, -2, 2);
  std::vector<float> weights = rng.floats(N * F);
  OwnedTensor gate = f32_tensor({N, F}, gate_values), up = f32_tensor({N, F}, up_values);
  OwnedTensor out({N, F}, DType::f32, Device::cpu);
  swiglu_forward(out, gate, up);
  EXPECT_LT(relative_error(to_vector(out),
                           reference_swiglu(to_double(gate_values), to_double(up_values))),
            1e-6);

  OwnedTensor dout = f32_tensor({N, F}, weights);
  OwnedTensor dgate({N, F}, DType::f32, Device::cpu), dup({N, F}, DType::f32, Device::cpu);
  swiglu_backward(dgate, dup, dout, gate, up);
  auto loss_of_gate = [&](const std::vector<double>& point) {
    return weighted_sum(reference_swiglu(point, to_double(up_values)), weights);
  };
  auto loss_of_up = [&](const std::vector<double>& point) {
    return weighted_sum(reference_swiglu(to_double(gate_values), point), weights);
  };
  EXPECT_LT(
      relative_error(to_vector(dgate), numeric_gradient(loss_of_gate, to_double(gate_values))),
      kGradientTolerance);
  EXPECT_LT(relative_error(to_vector(dup), numeric_gradient(loss_of_up, to_double(up_values))),
            kGradientTolerance);
}

// ---------------------------------------------------------------- elementwise and dropout

TEST(OpsElementwise, AddAndScaleInPlace) {
  Rng rng(60);
  std::vector<float> y_values = rng.floats(21), x_values = rng.floats(21);
  OwnedTensor y = f32_tensor({3, 7}, y_values), x = f32_tensor({3, 7}, x_values);
  add_inplace(y, x);
  scale_inplace(y, -1.5f);
  for (size_t i = 0; i < y_values.size(); ++i)
    EXPECT_EQ(y->f32()[i], (y_values[i] + x_values[i]) * -1.5f);
  OwnedTensor other_shape({7, 3}, DType::f32, Device::cpu);
  EXPECT_THROW(add_inplace(y, other_shape), Error);
}

TEST(OpsDropout, MaskIsReproducibleScaledAndSharedByBackward) {
  const int64_t count = 20000;
  const float p = 0.3f;
  Rng rng(70);
  std::vector<float> x_values = rng.floats(count, 0.5, 1.5);  // never zero: zero means dropped
  OwnedTensor x = f32_tensor({count}, x_values);
  OwnedTensor out({count}, DType::f32, Device::cpu), again({count}, DType::f32, Device::cpu);
  dropout(out, x, p, 1234, 5);
  dropout(again, x, p, 1234, 5);
  EXPECT_EQ(to_vector(out), to_vector(again));

  const float scale = 1.0f / (1.0f - p);
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    float value = out->f32()[i];
    if (value != 0.0f) {
      ++kept;
      EXPECT_EQ(value, x_values[size_t(i)] * scale);
    }
  }
  // Binomial(20000, 0.7): standard deviation 65 kept elements; 5 deviations is 325.
  EXPECT_NEAR(double(kept), 0.7 * count, 325.0);

  // Backward applies the same mask: dropout of dy with the same (seed, stream), here in place.
  std::vector<float> dy_values = rng.floats(count, 0.5, 1.5);
  OwnedTensor dy = f32_tensor({count}, dy_values);
  dropout(dy, dy, p, 1234, 5);
  for (int64_t i = 0; i < count; ++i)
    EXPECT_EQ(dy->f32()[i] == 0.0f, out->f32()[i] == 0.0f) << "element " << i;

  // Another stream or seed gives another mask.
  dropout(again, x, p, 1234, 6);
  EXPECT_NE(to_vector(out), to_vector(again));
  dropout(again, x, p, 1235, 5);
  EXPECT_NE(to_vector(out), to_vector(again));

  // p = 0 is the identity, bit for bit.
  dropout(again, x, 0.0f, 1234, 5);
  EXPECT_EQ(to_vector(again), x_values);
  EXPECT_THROW(dropout(again, x, 1.0f, 1234, 5), Error);
}

TEST(OpsDropout, CounterUniformIsUniformOnTheUnitInterval) {
  const int64_t count = 100000;
  double sum = 0;
  int64_t below_tenth = 0;
  for (int64_t i = 0; i < count; ++i) {
    float u = counter_uniform(42, 3, uint64_t(i));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    below_tenth += u < 0.1f;
  }
  // Mean of 1e5 uniforms: standard deviation 0.29 / sqrt(1e5) = 9e-4; 5 deviations.
  EXPECT_NEAR(sum / count, 0.5, 4.6e-3);
  // Binomial(1e5, 0.1): standard deviation 95; 5 deviations.
  EXPECT_NEAR(double(below_tenth), 0.1 * count, 475.0);
}

// ---------------------------------------------------------------- AdamW

struct ReferenceAdamW {
  std::vector<double> param, m, v;
};

// torch.optim.AdamW's single-tensor step, in double.
void reference_adamw_step(ReferenceAdamW& state, const std::vector<float>& grad,
                          const AdamWConfig& config, double learning_rate, int64_t step,
                          double grad_scale) {
  double beta1 = config.beta1, beta2 = config.beta2;
  for (size_t i = 0; i < state.param.size(); ++i) {
    double g = grad[i] * grad_scale;
    state.param[i] *= 1 - learning_rate * config.weight_decay;
    state.m[i] = beta1 * state.m[i] + (1 - beta1) * g;
    state.v[i] = beta2 * state.v[i] + (1 - beta2) * g * g;
    double m_hat = state.m[i] / (1 - std::pow(beta1, double(step)));
    double v_hat = state.v[i] / (1 - std::pow(beta2, double(step)));
    state.param[i] -= learning_rate * m_hat / (std::sqrt(v_hat) + config.epsilon);
  }
}

TEST(OpsAdamW, SeveralStepsMatchFloat64TorchAdamW) {
  const int64_t count = 37;
  AdamWConfig config;
  config.beta1 = 0.9f;
  config.beta2 = 0.95f;
  config.epsilon = 1e-6f;
  config.weight_decay = 0.1f;
  Rng rng(80);
  std::vector<float> initial = rng.floats(count);
  OwnedTensor param = f32_tensor({count}, initial);
  OwnedTensor m({count}, DType::f32, Device::cpu), v({count}, DType::f32, Device::cpu);
  ReferenceAdamW reference{to_double(initial), std::vector<double>(count),
                           std::vector<double>(count)};
  for (int64_t step = 1; step <= 6; ++step) {
    std::vector<float> grad_values = rng.floats(count, -3, 3);
    OwnedTensor grad = f32_tensor({count}, grad_values);
    float learning_rate = 1e-2f / float(step);  // a decaying schedule
    float grad_scale = step % 2 ? 0.5f : 1.0f;  // clipping on some steps
    adamw_update(param, grad, m, v, config, learning_rate, step, grad_scale);
    reference_adamw_step(reference, grad_values, config, learning_rate, step, grad_scale);
  }
  // f32 state through 6 steps: a few ulps of rounding per operation, so 1e-6 relative on the
  // moments. The parameter's total change (~1e-2) is checked on its own so that rounding of the
  // parameter itself cannot hide a wrong update: 1e-4 of the change, ~1e-7 absolute.
  EXPECT_LT(relative_error(to_vector(m), reference.m), 1e-6);
  EXPECT_LT(relative_error(to_vector(v), reference.v), 1e-6);
  std::vector<float> change = to_vector(param);
  std::vector<double> expected_change = reference.param;
  for (int64_t i = 0; i < count; ++i) {
    change[size_t(i)] -= initial[size_t(i)];
    expected_change[size_t(i)] -= initial[size_t(i)];
  }
  EXPECT_LT(relative_error(change, expected_change), 1e-4);
  EXPECT_THROW(adamw_update(param, param, m, v, config, 1e-3f, 0, 1.0f), Error);
}

TEST(OpsAdamW, SumOfSquaresAccumulatesInDouble) {
  Rng rng(90);
  std::vector<float> values = rng.floats(100003, -2, 2);
  OwnedTensor t = f32_tensor({100003}, values);
  double expected = 0;
  for (float value : values) expected += double(value) * value;
  // Double accumulation in any order: relative error ~1e-16 x sqrt(count).
  EXPECT_NEAR(sum_of_squares(t), expected, 1e-12 * expected);
}

// ---------------------------------------------------------------- argument checks

TEST(OpsChecks, WrongShapesDtypesAndDevicesAreErrors) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({5, 2}, DType::f32, Device::cpu);
  OwnedTensor out({4, 2}, DType::f32, Device::cpu);
  EXPECT_THROW(matmul(out, a, b, false, false), Error);  // inner 3 vs 5
  OwnedTensor b_good({3, 2}, DType::f32, Device::cpu), ints({3, 2}, DType::i32, Device::cpu);
  EXPECT_THROW(matmul(out, a, ints, false, false), Error);
  EXPECT_NO_THROW(matmul(out, a, b_good, false, false));

  OwnedTensor x({2, 6}, DType::f32, Device::cpu), w({5}, DType::f32, Device::cpu);
  OwnedTensor y({2, 6}, DType::f32, Device::cpu), rstd({2}, DType::f32, Device::cpu);
  try {
    rmsnorm_forward(y, rstd, x, w, 1e-5f);
    FAIL() << "a weight of the wrong size was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("rmsnorm_forward: weight"), std::string::npos)
        << error.what();
  }

  // A tensor claiming to live on the GPU next to host tensors is refused before any access.
  Tensor on_gpu = make_view(nullptr, {3, 2}, DType::f32, Device::cuda);
  EXPECT_THROW(matmul(out, a, on_gpu, false, false), Error);
}

}  // namespace
}  // namespace cst
