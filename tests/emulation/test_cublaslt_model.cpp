// The host model of cuBLASLt (tests/emulation/cublaslt.cpp) against a plain loop over the
// column-major definition D = alpha * op(A) op(B) + beta * C, and its refusals of what the real
// library refuses (or leaves undefined). Then kernels/gemm.cu running on the model: its mapping
// of row-major tensors onto cuBLASLt's operands, and its plans' cleanup when no algorithm exists.
//
// Tolerances: the reference sums in k order in f32, as the model does, so f32 outputs must be
// equal. bf16 outputs are the f32 value rounded once, so they are within half a bf16 ulp of the
// reference, at most 2^-8 of its magnitude (bf16 keeps 8 significant bits); through gemm.cu they
// are compared with the reference rounded to nearest even, which must be equal.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/tensor.h"
#include "tests/emulation/cublaslt_model.h"

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct FreeAligned {
  void operator()(void* memory) const { std::free(memory); }
};

// A column-major matrix in 256-byte-aligned memory (as cudaMalloc gives), optionally starting
// offset_bytes further on.
class Matrix {
 public:
  Matrix(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld, size_t offset_bytes = 0)
      : type(type), rows(rows), cols(cols), ld(ld), offset_bytes_(offset_bytes) {
    size_t bytes = offset_bytes + element_count() * element_bytes();
    memory_.reset(static_cast<std::byte*>(std::aligned_alloc(256, (bytes + 255) / 256 * 256)));
  }

  size_t element_count() const { return (cols - 1) * ld + rows; }
  size_t element_bytes() const { return type == CUDA_R_16BF ? 2 : 4; }
  void* data() const { return memory_.get() + offset_bytes_; }
  bool is_padding(size_t index) const { return index % ld >= rows; }

  float at(size_t index) const {
    if (type == CUDA_R_32F) return static_cast<const float*>(data())[index];
    return std::bit_cast<float>(uint32_t(static_cast<const uint16_t*>(data())[index]) << 16);
  }
  // bf16 keeps the top half of the f32 bits: any bf16 value will do for an input.
  void set(size_t index, float value) {
    if (type == CUDA_R_32F) static_cast<float*>(data())[index] = value;
    else static_cast<uint16_t*>(data())[index] = uint16_t(std::bit_cast<uint32_t>(value) >> 16);
  }
  float at(uint64_t row, uint64_t col) const { return at(row + col * ld); }

  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;

 private:
  size_t offset_bytes_;
  std::unique_ptr<std::byte, FreeAligned> memory_;
};

// Values in [-1, 1) where the matrix is, NaN in the padding between columns (never read).
void fill_random(Matrix& matrix, std::mt19937& random) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (size_t index = 0; index < matrix.element_count(); ++index)
    matrix.set(index, matrix.is_padding(index) ? kNaN : uniform(random));
}

void fill(Matrix& matrix, float value) {
  for (size_t index = 0; index < matrix.element_count(); ++index) matrix.set(index, value);
}

struct Shape {
  uint64_t m, n, k;
};

// D = alpha * op(A) op(B) + beta * C with stored shapes that follow the transposes, every ld
// ld_padding more than its rows. D starts as NaN everywhere: each entry must be written, and
// the padding must stay NaN.
struct Product {
  Product(cublasOperation_t transpose_a, cublasOperation_t transpose_b, cudaDataType_t input,
          cudaDataType_t output, Shape shape, int64_t ld_padding)
      : transpose_a(transpose_a),
        transpose_b(transpose_b),
        a(stored(input, transpose_a, shape.m, shape.k, ld_padding)),
        b(stored(input, transpose_b, shape.k, shape.n, ld_padding)),
        c(output, shape.m, shape.n, int64_t(shape.m) + ld_padding),
        d(output, shape.m, shape.n, int64_t(shape.m) + ld_padding) {
    fill(d, kNaN);
  }

  static Matrix stored(cudaDataType_t type, cublasOperation_t operation, uint64_t rows,
                       uint64_t cols, int64_t ld_padding) {
    if (operation == CUBLAS_OP_N) return Matrix(type, rows, cols, int64_t(rows) + ld_padding);
    return Matrix(type, cols, rows, int64_t(cols) + ld_padding);
  }

  void fill_inputs(uint32_t seed) {
    std::mt19937 random(seed);
    fill_random(a, random);
    fill_random(b, random);
    fill_random(c, random);
  }

  cublasOperation_t transpose_a, transpose_b;
  Matrix a, b, c, d;
  float alpha = 1.0f, beta = 0.0f;
  bool c_is_d = false;  // in place: C is D's memory and layout
};

float op_element(const Matrix& matrix, cublasOperation_t operation, uint64_t row, uint64_t col) {
  return operation == CUBLAS_OP_N ? matrix.at(row, col) : matrix.at(col, row);
}

// The reference, column-major m x n (taken before the call, as C may be D).
std::vector<float> expected_d(const Product& product) {
  const Matrix& c = product.c_is_d ? product.d : product.c;
  uint64_t m = product.d.rows, n = product.d.cols;
  uint64_t k = product.transpose_a == CUBLAS_OP_N ? product.a.cols : product.a.rows;
  std::vector<float> expected(m * n);
  for (uint64_t j = 0; j < n; ++j)
    for (uint64_t i = 0; i < m; ++i) {
      float sum = 0.0f;
      for (uint64_t p = 0; p < k; ++p)
        sum += op_element(product.a, product.transpose_a, i, p) *
               op_element(product.b, product.transpose_b, p, j);
      float value = product.alpha * sum;
      if (product.beta != 0.0f) value += product.beta * c.at(i, j);
      expected[i + j * m] = value;
    }
  return expected;
}

void expect_d_equals(const Matrix& d, const std::vector<float>& expected) {
  for (size_t index = 0; index < d.element_count(); ++index) {
    float actual = d.at(index);
    if (d.is_padding(index)) {
      EXPECT_TRUE(std::isnan(actual)) << "padding element " << index << " was written";
      continue;
    }
    float want = expected[index % d.ld + index / d.ld * d.rows];
    if (d.type == CUDA_R_32F)
      EXPECT_EQ(actual, want) << "element " << index;
    else
      EXPECT_LE(std::fabs(actual - want), std::fabs(want) * 0x1p-8f) << "element " << index;
  }
}

// The cuBLASLt objects of one product, destroyed with it.
class LtCall {
 public:
  explicit LtCall(const Product& product, cublasComputeType_t compute = CUBLAS_COMPUTE_32F,
                  cudaDataType_t scale = CUDA_R_32F) {
    EXPECT_EQ(cublasLtCreate(&handle), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulDescCreate(&operation, compute, scale), CUBLAS_STATUS_SUCCESS);
    set_transposes(product.transpose_a, product.transpose_b);
    const Matrix* matrices[] = {&product.a, &product.b, product.c_is_d ? &product.d : &product.c,
                                &product.d};
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(cublasLtMatrixLayoutCreate(&layouts[i], matrices[i]->type, matrices[i]->rows,
                                           matrices[i]->cols, matrices[i]->ld),
                CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulPreferenceCreate(&preference), CUBLAS_STATUS_SUCCESS);
  }
  ~LtCall() {
    cublasLtMatmulPreferenceDestroy(preference);
    for (cublasLtMatrixLayout_t layout : layouts) cublasLtMatrixLayoutDestroy(layout);
    cublasLtMatmulDescDestroy(operation);
    cublasLtDestroy(handle);
  }
  LtCall(const LtCall&) = delete;
  LtCall& operator=(const LtCall&) = delete;

  void set_transposes(int32_t transpose_a, int32_t transpose_b) {
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose_a,
                                             sizeof(transpose_a)),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSB, &transpose_b,
                                             sizeof(transpose_b)),
              CUBLAS_STATUS_SUCCESS);
  }
  void prefer_alignment(uint32_t bytes) {
    for (auto attribute :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)),
                CUBLAS_STATUS_SUCCESS);
  }
  void prefer_workspace(uint64_t bytes) {
    EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(
                  preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof(bytes)),
              CUBLAS_STATUS_SUCCESS);
  }

  cublasStatus_t heuristic(int requested = 1) {
    std::vector<cublasLtMatmulHeuristicResult_t> results(std::max(requested, 1));
    found = -1;
    cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, operation, layouts[0], layouts[1], layouts[2],
                                       layouts[3], preference, requested, results.data(), &found);
    result = results[0];
    return status;
  }

  // With the product's own pointers, or the ones given.
  cublasStatus_t matmul(const Product& product, const cublasLtMatmulAlgo_t* algorithm,
                        void* workspace = nullptr, size_t workspace_bytes = 0) {
    const void* c = product.c_is_d ? product.d.data() : product.c.data();
    return matmul_with(product, product.a.data(), product.b.data(), c, product.d.data(),
                       algorithm, workspace, workspace_bytes);
  }
  cublasStatus_t matmul_with(const Product& product, const void* a, const void* b, const void* c,
                             void* d, const cublasLtMatmulAlgo_t* algorithm, void* workspace,
                             size_t workspace_bytes) {
    return cublasLtMatmul(handle, operation, &product.alpha, a, layouts[0], b, layouts[1],
                          &product.beta, c, layouts[2], d, layouts[3], algorithm, workspace,
                          workspace_bytes, nullptr);
  }

  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t layouts[4] = {};
  cublasLtMatmulPreference_t preference = nullptr;
  cublasLtMatmulHeuristicResult_t result{};
  int found = -1;
};

// Heuristic then matmul, as kernels/gemm.cu does.
void run_and_check(Product& product) {
  std::vector<float> expected = expected_d(product);
  LtCall call(product);
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(call.found, 1);
  ASSERT_EQ(call.matmul(product, &call.result.algo), CUBLAS_STATUS_SUCCESS);
  expect_d_equals(product.d, expected);
}

// D untouched: still NaN everywhere.
void expect_d_untouched(const Matrix& d) {
  for (size_t index = 0; index < d.element_count(); ++index)
    EXPECT_TRUE(std::isnan(d.at(index))) << "element " << index << " was written";
}

const char* type_name(cudaDataType_t type) { return type == CUDA_R_16BF ? "bf16" : "f32"; }

TEST(CublasLtModel, MatmulMatchesReferenceForEveryTransposeTypeAndShape) {
  const cudaDataType_t type_pairs[][2] = {
      {CUDA_R_16BF, CUDA_R_16BF}, {CUDA_R_16BF, CUDA_R_32F}, {CUDA_R_32F, CUDA_R_32F}};
  const Shape shapes[] = {{1, 1, 1}, {3, 17, 5}, {17, 3, 33}, {16, 8, 64}, {5, 1, 17}, {1, 7, 3}};
  const float scales[][2] = {{1.0f, 0.0f}, {0.5f, -2.0f}};
  uint32_t seed = 0;
  for (cublasOperation_t transpose_a : {CUBLAS_OP_N, CUBLAS_OP_T})
    for (cublasOperation_t transpose_b : {CUBLAS_OP_N, CUBLAS_OP_T})
      for (const auto& types : type_pairs)
        for (Shape shape : shapes)
          for (int64_t ld_padding : {0, 3})
            for (const auto& scale : scales) {
              SCOPED_TRACE(testing::Message()
                           << "op(A) " << (transpose_a == CUBLAS_OP_T ? "T" : "N") << " op(B) "
                           << (transpose_b == CUBLAS_OP_T ? "T" : "N") << " "
                           << type_name(types[0]) << " -> " << type_name(types[1]) << " m "
                           << shape.m << " n " << shape.n << " k " << shape.k << " ld + "
                           << ld_padding << " alpha " << scale[0] << " beta " << scale[1]);
              Product product(transpose_a, transpose_b, types[0], types[1], shape, ld_padding);
              product.fill_inputs(++seed);
              product.alpha = scale[0];
              product.beta = scale[1];
              run_and_check(product);
            }
}

TEST(CublasLtModel, BetaZeroDoesNotReadC) {
  Product product(CUBLAS_OP_T, CUBLAS_OP_N, CUDA_R_16BF, CUDA_R_32F, {4, 6, 9}, 1);
  product.fill_inputs(7);
  fill(product.c, kNaN);
  run_and_check(product);  // every D entry compared with the reference: no NaN came through

  // C may then be NULL.
  fill(product.d, kNaN);
  LtCall call(product);
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call.matmul_with(product, product.a.data(), product.b.data(), nullptr,
                             product.d.data(), &call.result.algo, nullptr, 0),
            CUBLAS_STATUS_SUCCESS);
  expect_d_equals(product.d, expected_d(product));
}

TEST(CublasLtModel, InPlaceAccumulatesIntoD) {
  Product product(CUBLAS_OP_N, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_16BF, {9, 5, 12}, 2);
  product.fill_inputs(11);
  std::mt19937 random(12);
  fill_random(product.d, random);
  product.c_is_d = true;
  product.beta = 1.0f;
  // The padding of D is NaN (fill_random), and must stay so.
  run_and_check(product);
}

TEST(CublasLtModel, RefusesDimensionsThatDoNotConform) {
  // A's k (5) against B's k (6), then A's m against D's, D's n against B's, C against D.
  Product inner(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {3, 4, 5}, 0);
  inner.b = Matrix(CUDA_R_32F, 6, 4, 6);
  Product rows(CUBLAS_OP_T, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {3, 4, 5}, 0);
  rows.a = Matrix(CUDA_R_32F, 5, 2, 5);
  Product outer(CUBLAS_OP_N, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_16BF, {3, 4, 5}, 0);
  outer.d = Matrix(CUDA_R_16BF, 3, 5, 3);
  Product accumulator(CUBLAS_OP_T, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_32F, {3, 4, 5}, 0);
  accumulator.c = Matrix(CUDA_R_32F, 4, 3, 4);
  accumulator.beta = 1.0f;
  for (Product* product : {&inner, &rows, &outer, &accumulator}) {
    product->fill_inputs(3);
    fill(product->d, kNaN);
    LtCall call(*product);
    EXPECT_EQ(call.heuristic(), CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(call.matmul(*product, nullptr), CUBLAS_STATUS_INVALID_VALUE);
    expect_d_untouched(product->d);
  }
}

TEST(CublasLtModel, RefusesLeadingDimensionBelowRows) {
  Product product(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {4, 3, 2}, 0);
  product.fill_inputs(5);
  LtCall call(product);
  cublasLtMatrixLayoutDestroy(call.layouts[0]);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&call.layouts[0], CUDA_R_32F, 4, 2, 3),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call.heuristic(), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call.matmul(product, nullptr), CUBLAS_STATUS_INVALID_VALUE);
  expect_d_untouched(product.d);
}

TEST(CublasLtModel, UnsupportedTypesHaveNoAlgorithm) {
  Product f32_to_bf16(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_16BF, {2, 2, 2}, 0);
  EXPECT_EQ(LtCall(f32_to_bf16).heuristic(), CUBLAS_STATUS_NOT_SUPPORTED);

  Product mixed_inputs(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_16BF, CUDA_R_32F, {2, 2, 2}, 0);
  mixed_inputs.b = Matrix(CUDA_R_32F, 2, 2, 2);
  EXPECT_EQ(LtCall(mixed_inputs).heuristic(), CUBLAS_STATUS_NOT_SUPPORTED);

  Product half(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_16F, CUDA_R_16F, {2, 2, 2}, 0);
  EXPECT_EQ(LtCall(half).heuristic(), CUBLAS_STATUS_NOT_SUPPORTED);

  Product product(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {2, 2, 2}, 0);
  product.fill_inputs(1);
  LtCall tf32(product, CUBLAS_COMPUTE_32F_FAST_TF32);
  EXPECT_EQ(tf32.heuristic(), CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(tf32.matmul(product, nullptr), CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(LtCall(product, CUBLAS_COMPUTE_32F, CUDA_R_16BF).heuristic(),
            CUBLAS_STATUS_NOT_SUPPORTED);
  expect_d_untouched(product.d);
}

TEST(CublasLtModel, OperandsMustBeAlignedAsThePreferenceSaid) {
  Product product(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_16BF, CUDA_R_16BF, {4, 4, 4}, 0);
  product.d = Matrix(CUDA_R_16BF, 4, 4, 4, /*offset_bytes=*/2);
  product.fill_inputs(2);
  fill(product.d, kNaN);
  LtCall call(product);

  call.prefer_alignment(16);
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call.matmul(product, &call.result.algo), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call.matmul(product, nullptr), CUBLAS_STATUS_INVALID_VALUE);  // default: 256
  expect_d_untouched(product.d);

  call.prefer_alignment(2);
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  std::vector<float> expected = expected_d(product);
  EXPECT_EQ(call.matmul(product, &call.result.algo), CUBLAS_STATUS_SUCCESS);
  expect_d_equals(product.d, expected);

  // Below a bf16 element's size no algorithm exists.
  call.prefer_alignment(1);
  EXPECT_EQ(call.heuristic(), CUBLAS_STATUS_NOT_SUPPORTED);
  uint32_t three = 3;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(call.preference,
                                                 CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                 &three, sizeof(three)),
            CUBLAS_STATUS_INVALID_VALUE);
}

TEST(CublasLtModel, WorkspaceMustHoldWhatTheAlgorithmNeeds) {
  Product product(CUBLAS_OP_T, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {3, 3, 3}, 0);
  product.fill_inputs(4);
  LtCall call(product);
  call.prefer_workspace(1024);
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call.result.workspaceSize, 1024u);
  Matrix workspace(CUDA_R_32F, 512, 1, 512);  // 2048 bytes, 256-aligned
  Matrix misaligned_workspace(CUDA_R_32F, 512, 1, 512, /*offset_bytes=*/128);
  const cublasLtMatmulAlgo_t* algorithm = &call.result.algo;
  EXPECT_EQ(call.matmul(product, algorithm, workspace.data(), 512), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call.matmul(product, algorithm, nullptr, 1024), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call.matmul(product, algorithm, misaligned_workspace.data(), 1024),
            CUBLAS_STATUS_INVALID_VALUE);
  expect_d_untouched(product.d);
  EXPECT_EQ(call.matmul(product, algorithm, workspace.data(), 1024), CUBLAS_STATUS_SUCCESS);
}

TEST(CublasLtModel, RefusesMissingOrOverlappingOperands) {
  Product product(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {4, 4, 4}, 0);
  product.fill_inputs(6);
  product.beta = 1.0f;
  LtCall call(product);
  call.prefer_alignment(4);  // so that only the overlaps below are wrong
  ASSERT_EQ(call.heuristic(), CUBLAS_STATUS_SUCCESS);
  const cublasLtMatmulAlgo_t* algorithm = &call.result.algo;
  void* a = product.a.data();
  void* b = product.b.data();
  void* c = product.c.data();
  void* d = product.d.data();
  auto matmul = [&](const void* a, const void* b, const void* c, void* d) {
    return call.matmul_with(product, a, b, c, d, algorithm, nullptr, 0);
  };
  EXPECT_EQ(matmul(nullptr, b, c, d), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(matmul(a, nullptr, c, d), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(matmul(a, b, nullptr, d), CUBLAS_STATUS_INVALID_VALUE);  // beta != 0 reads C
  EXPECT_EQ(matmul(a, b, c, nullptr), CUBLAS_STATUS_INVALID_VALUE);
  expect_d_untouched(product.d);
  // D written over an input.
  EXPECT_EQ(matmul(a, b, c, a), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(matmul(a, b, c, b), CUBLAS_STATUS_INVALID_VALUE);
  // A C that overlaps D without being it: D one column further into the same memory.
  Matrix shared(CUDA_R_32F, 4, 5, 4);
  EXPECT_EQ(matmul(a, b, shared.data(), static_cast<float*>(shared.data()) + 4),
            CUBLAS_STATUS_INVALID_VALUE);
  // In place with another ld for C than for D.
  cublasLtMatrixLayoutDestroy(call.layouts[2]);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&call.layouts[2], CUDA_R_32F, 4, 4, 5),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(matmul(a, b, d, d), CUBLAS_STATUS_INVALID_VALUE);
  expect_d_untouched(product.d);
}

TEST(CublasLtModel, AlgorithmComesFromTheHeuristicOrIsImplicit) {
  Product product(CUBLAS_OP_N, CUBLAS_OP_T, CUDA_R_16BF, CUDA_R_32F, {5, 3, 7}, 1);
  product.fill_inputs(8);
  LtCall call(product);
  cublasLtMatmulAlgo_t zeroed{};
  EXPECT_EQ(call.matmul(product, &zeroed), CUBLAS_STATUS_INVALID_VALUE);
  expect_d_untouched(product.d);
  std::vector<float> expected = expected_d(product);
  EXPECT_EQ(call.matmul(product, nullptr), CUBLAS_STATUS_SUCCESS);
  expect_d_equals(product.d, expected);

  EXPECT_EQ(call.heuristic(0), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(call.heuristic(3), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(call.found, 1);
  EXPECT_EQ(call.result.state, CUBLAS_STATUS_SUCCESS);
}

TEST(CublasLtModel, AttributesAreCheckedAsTheHeaderSays) {
  cublasLtMatmulDesc_t operation = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&operation, CUBLAS_COMPUTE_32F, CUDA_R_32F),
            CUBLAS_STATUS_SUCCESS);
  int32_t transpose = CUBLAS_OP_T;
  int64_t wide = CUBLAS_OP_T;
  int32_t not_an_operation = 7;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &wide,
                                           sizeof(wide)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, nullptr,
                                           sizeof(transpose)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSB,
                                           &not_an_operation, sizeof(not_an_operation)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                           sizeof(epilogue)),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                           sizeof(transpose)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulDescDestroy(operation), CUBLAS_STATUS_SUCCESS);

  cublasLtMatmulPreference_t preference = nullptr;
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&preference), CUBLAS_STATUS_SUCCESS);
  uint32_t narrow = 1024;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(
                preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &narrow, sizeof(narrow)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(preference), CUBLAS_STATUS_SUCCESS);
}

TEST(CublasLtModel, CountsLiveObjectsAndRefusesDestroyedOnes) {
  using cst::emulation::live_cublaslt_objects;
  const cst::emulation::CublasLtObjectCounts before = live_cublaslt_objects();
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t layout = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  ASSERT_EQ(cublasLtCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescCreate(&operation, CUBLAS_COMPUTE_32F, CUDA_R_32F),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 2, 2, 2), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&preference), CUBLAS_STATUS_SUCCESS);
  cst::emulation::CublasLtObjectCounts during = live_cublaslt_objects();
  EXPECT_EQ(during.handles, before.handles + 1);
  EXPECT_EQ(during.matmul_descs, before.matmul_descs + 1);
  EXPECT_EQ(during.layouts, before.layouts + 1);
  EXPECT_EQ(during.preferences, before.preferences + 1);

  EXPECT_EQ(cublasLtMatrixLayoutDestroy(layout), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(preference), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmulDescDestroy(operation), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtDestroy(handle), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(live_cublaslt_objects(), before);

  // Destroyed objects are refused, not read; destroying one twice is refused; NULL is nothing.
  int32_t transpose = CUBLAS_OP_T;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                           sizeof(transpose)),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatrixLayoutDestroy(layout), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(preference), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescDestroy(operation), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtDestroy(handle), CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(cublasLtMatrixLayoutDestroy(nullptr), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(live_cublaslt_objects(), before);

  // A product through a destroyed layout.
  Product product(CUBLAS_OP_N, CUBLAS_OP_N, CUDA_R_32F, CUDA_R_32F, {2, 2, 2}, 0);
  product.fill_inputs(9);
  {
    LtCall call(product);
    cublasLtMatrixLayoutDestroy(call.layouts[1]);
    EXPECT_EQ(call.heuristic(), CUBLAS_STATUS_INVALID_VALUE);
    EXPECT_EQ(call.matmul(product, nullptr), CUBLAS_STATUS_INVALID_VALUE);
    call.layouts[1] = nullptr;
  }
  expect_d_untouched(product.d);
  EXPECT_EQ(live_cublaslt_objects(), before);
}

// ---- kernels/gemm.cu on the model ----

// A tensor on the (emulated) device whose data starts offset_elements past a 256-byte boundary,
// holding the given values converted to dtype.
struct DeviceTensor {
  cst::OwnedTensor memory;
  cst::Tensor view;
};

DeviceTensor device_copy(const cst::Tensor& values, cst::DType dtype, int64_t offset_elements) {
  DeviceTensor made{cst::OwnedTensor({values.numel() + offset_elements}, dtype, cst::Device::cuda),
                    {}};
  made.view = made.memory.view;
  made.view.data = static_cast<char*>(made.memory->data) + offset_elements * cst::dtype_size(dtype);
  made.view.rank = values.rank;
  made.view.shape = values.shape;
  cst::copy_tensor(made.view, values);
  return made;
}

// Row-major values in [-1, 1) that bf16 holds exactly, so both input dtypes see the same numbers.
cst::OwnedTensor random_values(int64_t rows, int64_t cols, uint32_t seed) {
  cst::OwnedTensor values({rows, cols}, cst::DType::f32, cst::Device::cpu);
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int64_t i = 0; i < values->numel(); ++i)
    values->f32()[i] = cst::bf16_to_f32(cst::f32_to_bf16(uniform(random)));
  return values;
}

// out = alpha * op(a) @ op(b) + beta * out, row-major, summed over the inner dimension in order
// in f32: what the model must give through gemm.cu's column-major mapping.
std::vector<float> row_major_reference(const cst::Tensor& a, const cst::Tensor& b,
                                       const cst::Tensor& out, bool transpose_a,
                                       bool transpose_b, float alpha, float beta) {
  int64_t rows = out.shape[0], cols = out.shape[1];
  int64_t inner = transpose_a ? a.shape[0] : a.shape[1];
  auto op_a = [&](int64_t i, int64_t p) {
    return transpose_a ? a.f32()[p * rows + i] : a.f32()[i * inner + p];
  };
  auto op_b = [&](int64_t p, int64_t j) {
    return transpose_b ? b.f32()[j * inner + p] : b.f32()[p * cols + j];
  };
  std::vector<float> expected(rows * cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      float sum = 0.0f;
      for (int64_t p = 0; p < inner; ++p) sum += op_a(i, p) * op_b(p, j);
      float value = alpha * sum;
      if (beta != 0.0f) value += beta * out.f32()[i * cols + j];
      expected[i * cols + j] = value;
    }
  return expected;
}

// Every transpose and dtype combination, with a, b and out at three different alignments (256,
// one element, two elements), so a swapped layout, transpose, ld or alignment in gemm.cu shows.
TEST(GemmOnCublasLtModel, MatmulMapsRowMajorOperandsExactly) {
  const cst::DType dtype_pairs[][2] = {{cst::DType::bf16, cst::DType::bf16},
                                       {cst::DType::bf16, cst::DType::f32},
                                       {cst::DType::f32, cst::DType::f32}};
  const int64_t rows = 5, cols = 3, inner = 7;
  uint32_t seed = 100;
  for (bool transpose_a : {false, true})
    for (bool transpose_b : {false, true})
      for (const auto& dtypes : dtype_pairs) {
        SCOPED_TRACE(testing::Message() << "a" << (transpose_a ? "^T" : "") << " @ b"
                                        << (transpose_b ? "^T" : "") << " "
                                        << cst::dtype_name(dtypes[0]) << " -> "
                                        << cst::dtype_name(dtypes[1]));
        cst::OwnedTensor a = transpose_a ? random_values(inner, rows, ++seed)
                                         : random_values(rows, inner, ++seed);
        cst::OwnedTensor b = transpose_b ? random_values(cols, inner, ++seed)
                                         : random_values(inner, cols, ++seed);
        cst::OwnedTensor out = random_values(rows, cols, ++seed);
        const float alpha = 0.75f, beta = -0.5f;
        std::vector<float> expected =
            row_major_reference(a, b, out, transpose_a, transpose_b, alpha, beta);
        DeviceTensor a_device = device_copy(a, dtypes[0], 0);
        DeviceTensor b_device = device_copy(b, dtypes[0], 1);
        DeviceTensor out_device = device_copy(out, dtypes[1], 2);
        cst::cuda::matmul(out_device.view, a_device.view, b_device.view, transpose_a, transpose_b,
                          alpha, beta);
        std::vector<float> actual = cst::to_host_f32(out_device.view);
        for (size_t i = 0; i < expected.size(); ++i) {
          float want = expected[i];
          if (dtypes[1] == cst::DType::bf16) want = cst::bf16_to_f32(cst::f32_to_bf16(want));
          EXPECT_EQ(actual[i], want) << "out element " << i;
        }
      }
}

// A plan whose heuristic finds no algorithm throws from its constructor; the descriptors it had
// made must be destroyed all the same, and nothing half-made stays in the cache. A bf16 operand
// one byte off its element boundary has no algorithm (below an element's alignment).
TEST(GemmOnCublasLtModel, PlanWithoutAlgorithmLeavesNoObjects) {
  cst::OwnedTensor a = random_values(4, 6, 1), b = random_values(3, 6, 2);
  DeviceTensor a_device = device_copy(a, cst::DType::bf16, 1);
  DeviceTensor b_device = device_copy(b, cst::DType::bf16, 0);
  cst::OwnedTensor out({4, 3}, cst::DType::f32, cst::Device::cuda);
  // The process-wide handle and workspace are made by the first product.
  cst::cuda::matmul(out, a_device.view, b_device.view, false, true, 1.0f, 0.0f);
  const cst::emulation::CublasLtObjectCounts before = cst::emulation::live_cublaslt_objects();

  cst::Tensor odd_a = a_device.view;
  odd_a.data = static_cast<char*>(a_device.view.data) - 1;
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      cst::cuda::matmul(out, odd_a, b_device.view, false, true, 1.0f, 0.0f);
      ADD_FAILURE() << "a bf16 operand at an odd address found an algorithm";
    } catch (const cst::Error& error) {
      EXPECT_NE(std::string(error.what()).find("cuBLASLt has no algorithm"), std::string::npos)
          << error.what();
    }
    EXPECT_EQ(cst::emulation::live_cublaslt_objects(), before) << "attempt " << attempt;
  }
}

// out (rows, cols) = a (rows, 3) @ b (3, cols) in f32: each rows value is a key of its own for
// gemm.cu's plan cache, and cols keeps one test's keys apart from another's.
class KeyedProducts {
 public:
  KeyedProducts(int64_t max_rows, int64_t cols)
      : a_({max_rows, 3}, cst::DType::f32, cst::Device::cuda),
        b_({3, cols}, cst::DType::f32, cst::Device::cuda),
        out_({max_rows, cols}, cst::DType::f32, cst::Device::cuda) {
    for (const cst::Tensor& tensor : {*a_, *b_}) cst::fill_zero(tensor);
  }
  void run(int64_t rows) {
    cst::cuda::matmul(out_->rows(0, rows), a_->rows(0, rows), b_, false, false, 1.0f, 0.0f);
  }

 private:
  cst::OwnedTensor a_, b_, out_;
};

// A key used again finds its plan; past the cache's capacity (whatever it is, below 4000 plans)
// the number of plans stops growing, and the oldest key has to be planned again.
TEST(GemmOnCublasLtModel, PlanCacheReusesPlansAndStaysBounded) {
  using cst::emulation::cublaslt_heuristic_queries;
  using cst::emulation::live_cublaslt_objects;
  const int64_t keys = 4000;
  KeyedProducts products(2 * keys, 5);
  int64_t queries = cublaslt_heuristic_queries();
  products.run(1);
  products.run(1);
  EXPECT_EQ(cublaslt_heuristic_queries(), queries + 1) << "the second product reuses the plan";

  for (int64_t rows = 2; rows <= keys; ++rows) products.run(rows);
  cst::emulation::CublasLtObjectCounts after_first = live_cublaslt_objects();
  for (int64_t rows = keys + 1; rows <= 2 * keys; ++rows) products.run(rows);
  cst::emulation::CublasLtObjectCounts after_second = live_cublaslt_objects();
  EXPECT_EQ(after_second, after_first) << "4000 more keys, no more plans";
  EXPECT_LT(after_first.matmul_descs, keys);

  queries = cublaslt_heuristic_queries();
  products.run(1);
  EXPECT_EQ(cublaslt_heuristic_queries(), queries + 1) << "the oldest plan was evicted";
}

// Least recently used goes first: a key used every hundred new keys is never planned again.
TEST(GemmOnCublasLtModel, PlanCacheKeepsRecentlyUsedPlans) {
  const int64_t keys = 4000;
  KeyedProducts products(keys + 1, 6);
  products.run(1);
  int64_t queries = cst::emulation::cublaslt_heuristic_queries();
  for (int64_t rows = 2; rows <= keys + 1; ++rows) {
    products.run(rows);
    if (rows % 100 == 0) products.run(1);
  }
  EXPECT_EQ(cst::emulation::cublaslt_heuristic_queries(), queries + keys);
}

}  // namespace

namespace cst::emulation {

// gtest prints the counts in failure messages through this.
void PrintTo(const CublasLtObjectCounts& counts, std::ostream* out) {
  *out << "{handles " << counts.handles << ", matmul descs " << counts.matmul_descs
       << ", layouts " << counts.layouts << ", preferences " << counts.preferences << "}";
}

}  // namespace cst::emulation
