// The CUDA kernels against the CPU reference (the same cst:: op on CPU tensors).
//
// Inputs are random, never zero, and rounded to bf16 first, so both backends see the very same
// numbers and the comparison measures only the GPU's arithmetic and output rounding. Errors are
// relative over the whole tensor, ||gpu - cpu|| / ||cpu||:
//   bf16 outputs <= 1e-2: bf16 keeps 8 significant bits, so one rounding costs at most
//     2^-9 = 0.2% per element; a result that passes through two or three roundings (a GEMM on a
//     bf16 intermediate, dz in bf16) stays well under 1%, while a wrong index, a missing term or a
//     race gives errors of order 1. The emulated GPU (cst_emulated_tests, under all three thread
//     schedules) gives 1.4e-3 to 2.6e-3, the largest where y + x and the scaling by -1.5 round
//     twice: 3.8 times below the bound at least. Another summation order, as the tensor cores
//     take, moves single roundings by a bf16 step, not the size of these whole-tensor errors.
//   f32 outputs <= 1e-5: the same f32 math in another order (f32 sums vs the CPU's double sums,
//     GPU expf vs libm) differs by a few ulps, ~1e-7 relative per element; the emulated GPU gives
//     at most 1.2e-7 (85 times below), apart from sums over a vocabulary (next).
//   f32 sums over a whole vocabulary <= 2e-5: the gradient of the log-probs, dz @ lm_head, sums
//     V = 32000 products into each element. Added one after another (as the emulated GPU's GEMM
//     does, and a GPU GEMM's accumulator may along K), each addition rounds at the scale of the
//     running sum, which is the result's: about sqrt(V) 2^-24 = 1e-5 relative. Over 30 seeds of
//     this test's inputs the emulated GPU gives up to 7.3e-6 (median 4.7e-6); twice that is
//     under 2e-5.
// Tests of GPU kernels skip when no GPU is visible; the host-side tests run everywhere.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cuda_random.cuh"
#include "kernels/device.h"
#include "kernels/elementwise.h"
#include "kernels/attention_decode.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/logprobs.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/tensor.h"

namespace cst {
namespace {

constexpr double kBf16Tolerance = 1e-2;
constexpr double kF32Tolerance = 1e-5;
constexpr double kF32VocabularySumTolerance = 2e-5;

std::vector<int64_t> shape_of(const Tensor& t) {
  return std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.rank);
}

// Uniform in [-scale, scale] with no zeros, rounded to bf16 values (exact in f32).
OwnedTensor random_cpu(const std::vector<int64_t>& shape, uint32_t seed, float scale = 1.0f) {
  OwnedTensor t(shape, DType::f32, Device::cpu);
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  std::bernoulli_distribution negative(0.5);
  float* data = t->f32();
  for (int64_t i = 0; i < t->numel(); ++i) {
    float value = scale * uniform(generator) * (negative(generator) ? -1.0f : 1.0f);
    data[i] = bf16_to_f32(f32_to_bf16(value));
  }
  return t;
}

OwnedTensor random_ints(int64_t count, int32_t low, int32_t high, uint32_t seed) {
  OwnedTensor t({count}, DType::i32, Device::cpu);
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int32_t> uniform(low, high - 1);
  for (int64_t i = 0; i < count; ++i) t->i32()[i] = uniform(generator);
  return t;
}

OwnedTensor upload(const Tensor& cpu, DType dtype) {
  OwnedTensor gpu(shape_of(cpu), dtype, Device::cuda);
  copy_tensor(gpu, cpu);
  return gpu;
}

OwnedTensor download(const Tensor& gpu) {
  OwnedTensor cpu(shape_of(gpu), gpu.dtype == DType::i32 ? DType::i32 : DType::f32, Device::cpu);
  copy_tensor(cpu, gpu);
  return cpu;
}

// A GPU copy that starts `offset` elements past a 256-byte aligned allocation. With the default of
// one, no 16-byte chunk of it is aligned: the kernels must take their element-wise paths (and
// cuBLASLt a kernel for the lesser alignment) and still be right.
struct MisalignedTensor {
  OwnedTensor memory;
  Tensor view;
  operator const Tensor&() const { return view; }
};

MisalignedTensor upload_misaligned(const Tensor& cpu, DType dtype, int64_t offset = 1) {
  MisalignedTensor result{OwnedTensor({cpu.numel() + offset}, dtype, Device::cuda), {}};
  result.view = result.memory.view;
  result.view.data = static_cast<char*>(result.memory->data) + offset * dtype_size(dtype);
  result.view.rank = cpu.rank;
  result.view.shape = cpu.shape;
  copy_tensor(result.view, cpu);
  return result;
}

// ||gpu - cpu|| / ||cpu|| over the whole tensor, in double.
double relative_error(const Tensor& gpu, const Tensor& cpu) {
  OwnedTensor result = download(gpu);
  EXPECT_EQ(result->numel(), cpu.numel());
  double difference = 0, reference = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    double expected = cpu.f32()[i], actual = result->f32()[i];
    difference += (actual - expected) * (actual - expected);
    reference += expected * expected;
  }
  EXPECT_GT(reference, 0.0) << "the reference is all zeros: the comparison would prove nothing";
  return std::sqrt(difference / reference);
}

double tolerance_for(DType dtype) { return dtype == DType::bf16 ? kBf16Tolerance : kF32Tolerance; }

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: the kernels cannot run on this machine";
  }
};

// ---- host-side checks: no GPU needed ----

TEST(CudaKernelsHost, DropoutUniformMatchesCpuBitForBit) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefcafef00dull})
    for (uint64_t stream : {0ull, 3ull, 1ull << 40})
      for (uint64_t index : {0ull, 1ull, 2ull, 1000ull, 123456789ull, (1ull << 33) + 7}) {
        float cpu = counter_uniform(seed, stream, index);
        float gpu_formula = cuda::uniform_from_key(cuda::dropout_stream_key(seed, stream), index);
        ASSERT_EQ(cpu, gpu_formula) << "seed " << seed << " stream " << stream << " index " << index;
      }
}

TEST(CudaKernelsHost, MatmulRejectsMixedDtypes) {
  // Views only: the dtype check comes before any use of the memory or the GPU.
  Tensor out = make_view(nullptr, {4, 4}, DType::f32, Device::cuda);
  Tensor a = make_view(nullptr, {4, 4}, DType::bf16, Device::cuda);
  Tensor b = make_view(nullptr, {4, 4}, DType::f32, Device::cuda);
  try {
    cuda::matmul(out, a, b, false, false, 1.0f, 0.0f);
    FAIL() << "mixed input dtypes were accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("same dtype"), std::string::npos) << error.what();
  }
}

// A lane holds at most 8 dimensions of a head: a wider head is refused before any launch.
TEST(CudaKernelsHost, AttentionDecodeRejectsHeadDimPast256) {
  const AttentionShape shape{2, 1, 264, 0};
  Tensor q = make_view(nullptr, {3, 2, 264}, DType::bf16, Device::cuda);
  Tensor cache = make_view(nullptr, {10, 1, 264}, DType::bf16, Device::cuda);
  Tensor indices = make_view(nullptr, {3}, DType::i32, Device::cuda);
  try {
    cuda::attention_decode(q, q, cache, cache, indices, indices, shape);
    FAIL() << "head_dim 264 was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("head_dim 264 must be 1 to 256"), std::string::npos) << error.what();
  }
}

// ---- GEMM ----

TEST_F(CudaKernels, MatmulMatchesCpuForEveryTransposeAndDtype) {
  struct Dtypes { DType input, output; };
  const int64_t shapes[][3] = {{7, 5, 3}, {64, 48, 80}, {33, 17, 129}, {1, 300, 64}};
  uint32_t seed = 1;
  for (auto [input, output] : {Dtypes{DType::bf16, DType::f32}, Dtypes{DType::bf16, DType::bf16},
                               Dtypes{DType::f32, DType::f32}})
    for (bool transpose_a : {false, true})
      for (bool transpose_b : {false, true})
        for (auto [m, n, k] : shapes) {
          OwnedTensor a = random_cpu(transpose_a ? std::vector<int64_t>{k, m} : std::vector<int64_t>{m, k}, seed++);
          OwnedTensor b = random_cpu(transpose_b ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n}, seed++);
          OwnedTensor out = random_cpu({m, n}, seed++);
          OwnedTensor a_gpu = upload(a, input), b_gpu = upload(b, input), out_gpu = upload(out, output);
          matmul(out, a, b, transpose_a, transpose_b, 0.75f, 0.5f);
          matmul(out_gpu, a_gpu, b_gpu, transpose_a, transpose_b, 0.75f, 0.5f);
          EXPECT_LE(relative_error(out_gpu, out), tolerance_for(output))
              << dtype_name(input) << " -> " << dtype_name(output) << " m " << m << " n " << n
              << " k " << k << " ta " << transpose_a << " tb " << transpose_b;
        }
}

// Operands that start a few elements past an aligned address (row views of a tensor with an odd
// width are like this): cuBLASLt must be asked for kernels of each operand's own alignment. Offsets
// of 1, 2 and 4 elements give three different alignments (bf16: 2, 4, 8 bytes; f32: 4, 8, 16), and
// every assignment of them to a, b and out makes each operand in turn the least aligned, so a
// promise taken from the wrong operand, or from one operand for all three, is refused.
TEST_F(CudaKernels, MatmulOnMisalignedViewsMatchesCpu) {
  const std::array<int64_t, 3> offset_orders[] = {{1, 2, 4}, {1, 4, 2}, {2, 1, 4}, {2, 4, 1}, {4, 1, 2}, {4, 2, 1}};
  uint32_t seed = 50;
  for (DType dtype : {DType::bf16, DType::f32})
    // k = 515: odd, and short enough that f32 sums in two orders stay ~1e-6 apart.
    for (auto [m, n, k] : {std::array<int64_t, 3>{17, 40, 24}, {5, 33, 515}}) {
      OwnedTensor a = random_cpu({m, k}, seed++), b = random_cpu({n, k}, seed++);
      OwnedTensor out({m, n}, DType::f32, Device::cpu);
      matmul(out, a, b, false, true);
      for (auto [offset_a, offset_b, offset_out] : offset_orders) {
        MisalignedTensor a_gpu = upload_misaligned(a, dtype, offset_a), b_gpu = upload_misaligned(b, dtype, offset_b);
        MisalignedTensor out_gpu = upload_misaligned(out, dtype, offset_out);
        matmul(out_gpu, a_gpu, b_gpu, false, true);
        EXPECT_LE(relative_error(out_gpu, out), tolerance_for(dtype))
            << dtype_name(dtype) << " m " << m << " n " << n << " k " << k << ", offsets in elements: a "
            << offset_a << " b " << offset_b << " out " << offset_out;
      }
    }
}

// ---- embedding ----

TEST_F(CudaKernels, EmbeddingGathersExactRows) {
  // 12 and 13: rows that are not whole 16-byte chunks; 4095 and 5120: model widths, odd and not.
  for (int64_t channels : {12, 64, 13, 4095, 5120})
    for (int64_t tokens : {1, 17}) {
      OwnedTensor table = random_cpu({37, channels}, 7);
      OwnedTensor ids = random_ints(tokens, 0, 37, 8);
      OwnedTensor out({tokens, channels}, DType::f32, Device::cpu);
      embedding_forward(out, ids, table);
      OwnedTensor ids_gpu = upload(ids, DType::i32), table_gpu = upload(table, DType::bf16);
      for (DType output : {DType::bf16, DType::f32}) {
        OwnedTensor out_gpu({tokens, channels}, output, Device::cuda);
        embedding_forward(out_gpu, ids_gpu, table_gpu);
        EXPECT_EQ(relative_error(out_gpu, out), 0.0) << "a gather of bf16 values is exact";
      }
      MisalignedTensor out_misaligned = upload_misaligned(out, DType::bf16);
      embedding_forward(out_misaligned, ids_gpu, table_gpu);
      EXPECT_EQ(relative_error(out_misaligned, out), 0.0) << "misaligned output, channels " << channels;
    }
}

// The ids are not read back per call: a bad id is raised at the next synchronisation, with the
// CPU's message, and the error is cleared for the next batch.
TEST_F(CudaKernels, EmbeddingRejectsIdOutsideVocabulary) {
  OwnedTensor table = upload(random_cpu({10, 8}, 9), DType::bf16);
  OwnedTensor ids = random_ints(5, 0, 10, 10);
  ids->i32()[3] = 10;
  OwnedTensor ids_gpu = upload(ids, DType::i32);
  OwnedTensor out({5, 8}, DType::bf16, Device::cuda);
  embedding_forward(out, ids_gpu, table);
  try {
    cuda::synchronize();
    FAIL() << "an id outside the vocabulary was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("embedding_forward: ids[3] = 10 is outside the vocabulary [0, 10)"),
              std::string::npos)
        << error.what();
  }
  ids->i32()[3] = 2;
  OwnedTensor good_ids = upload(ids, DType::i32);
  embedding_forward(out, good_ids, table);
  EXPECT_NO_THROW(cuda::synchronize()) << "the bad id must not be reported twice";
  ids->i32()[1] = -1;
  OwnedTensor negative_ids = upload(ids, DType::i32);
  embedding_forward(out, negative_ids, table);
  EXPECT_THROW(download(out), Error) << "a download synchronises and reports too";
}

TEST_F(CudaKernels, ScatterWritesExactRowsAndOnlyThose) {
  for (int64_t channels : {12, 64, 13, 1024}) {
    OwnedTensor table = random_cpu({21, channels}, 11), rows = random_cpu({4, channels}, 12);
    OwnedTensor ids = random_ints(4, 0, 21, 13);
    ids->i32()[0] = 0, ids->i32()[1] = 20, ids->i32()[2] = 7, ids->i32()[3] = 8;  // distinct, both ends
    OwnedTensor ids_gpu = upload(ids, DType::i32), rows_gpu = upload(rows, DType::bf16);
    for (DType dtype : {DType::bf16, DType::f32}) {
      OwnedTensor table_gpu = upload(table, dtype);
      scatter_rows(table_gpu, ids_gpu, rows_gpu);
      OwnedTensor expected = download(upload(table, DType::f32));
      scatter_rows(expected, ids, rows);
      EXPECT_EQ(relative_error(table_gpu, expected), 0.0) << "channels " << channels;
    }
  }
  OwnedTensor table = upload(random_cpu({5, 8}, 14), DType::bf16);
  OwnedTensor bad_ids = random_ints(2, 0, 5, 15);
  bad_ids->i32()[1] = 5;
  scatter_rows(table, upload(bad_ids, DType::i32), upload(random_cpu({2, 8}, 16), DType::bf16));
  try {
    cuda::synchronize();
    FAIL() << "a row outside the table was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("scatter_rows: ids[1] = 5 is outside the table's rows [0, 5)"),
              std::string::npos) << error.what();
  }
}

// Three sequences of lengths 6, 1 and 40 in a cache of 48 rows each, new tokens from all three
// (the last four of the longest), GQA 4:1 and 1:1, with and without a window, D 64 and 128 as in
// Llama and Mistral, 12, 16 and 24 as in the test and demo models (lanes without a dimension), and
// 100 (a lane holds 3 or 4 dimensions).
TEST_F(CudaKernels, AttentionDecodeMatchesCpu) {
  const int64_t capacity = 48;
  const std::vector<int64_t> lengths = {6, 1, 40};
  for (AttentionShape shape : {AttentionShape{8, 2, 64, 0}, AttentionShape{4, 4, 128, 16}, AttentionShape{4, 1, 12, 0},
                               AttentionShape{4, 2, 16, 5}, AttentionShape{4, 2, 24, 0}, AttentionShape{2, 1, 100, 0}}) {
    const int64_t rows = capacity * int64_t(lengths.size());
    OwnedTensor keys = random_cpu({rows, shape.kv_heads, shape.head_dim}, 17);
    OwnedTensor values = random_cpu({rows, shape.kv_heads, shape.head_dim}, 18);
    std::vector<int32_t> cache_rows, positions;
    for (size_t s = 0; s < lengths.size(); ++s)
      for (int64_t p = std::max<int64_t>(0, lengths[s] - 4); p < lengths[s]; ++p) {
        cache_rows.push_back(int32_t(int64_t(s) * capacity + p));
        positions.push_back(int32_t(p));
      }
    const int64_t n = int64_t(cache_rows.size());
    OwnedTensor rows_cpu({n}, DType::i32, Device::cpu), positions_cpu({n}, DType::i32, Device::cpu);
    std::copy(cache_rows.begin(), cache_rows.end(), rows_cpu->i32());
    std::copy(positions.begin(), positions.end(), positions_cpu->i32());
    OwnedTensor q = random_cpu({n, shape.heads, shape.head_dim}, 19);
    OwnedTensor out({n, shape.heads, shape.head_dim}, DType::f32, Device::cpu);
    attention_decode(out, q, keys, values, rows_cpu, positions_cpu, shape);
    for (DType dtype : {DType::bf16, DType::f32}) {
      OwnedTensor out_gpu({n, shape.heads, shape.head_dim}, dtype, Device::cuda);
      attention_decode(out_gpu, upload(q, dtype), upload(keys, dtype), upload(values, dtype),
                       upload(rows_cpu, DType::i32), upload(positions_cpu, DType::i32), shape);
      EXPECT_LT(relative_error(out_gpu, out), tolerance_for(dtype)) << "head_dim " << shape.head_dim;
    }
  }
}

// Rows are not read back per call: a token whose rows leave the cache is raised at the next
// synchronisation, naming the row that lies outside (or the negative position), and its output is
// zero. head_dim 12 leaves most lanes without a dimension, the bad path included.
TEST_F(CudaKernels, AttentionDecodeRejectsRowsOutsideTheCache) {
  const AttentionShape shape{2, 1, 12, 0};
  OwnedTensor cache = upload(random_cpu({10, 1, 12}, 20), DType::bf16);
  OwnedTensor q = upload(random_cpu({2, 2, 12}, 21), DType::bf16);
  struct BadToken { int32_t row, position; const char* message; };
  for (BadToken bad : {BadToken{12, 3, "token[1] = 12 is outside the cache's rows [0, 10)"},
                       BadToken{2, 5, "token[1] = -3 is outside the cache's rows [0, 10)"},
                       BadToken{2, -2, "position of token[1] = -2 is outside the positions the cache holds [0, 10)"}}) {
    OwnedTensor rows({2}, DType::i32, Device::cpu), positions({2}, DType::i32, Device::cpu);
    rows->i32()[0] = 4, positions->i32()[0] = 4;  // a good token first
    rows->i32()[1] = bad.row, positions->i32()[1] = bad.position;
    OwnedTensor out = upload(random_cpu({2, 2, 12}, 22), DType::bf16);
    attention_decode(out, q, cache, cache, upload(rows, DType::i32), upload(positions, DType::i32), shape);
    try {
      cuda::synchronize();
      FAIL() << "a token reaching outside the cache was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(bad.message), std::string::npos) << error.what();
    }
    OwnedTensor result = download(out);
    for (int64_t k = 2 * 12; k < 4 * 12; ++k) ASSERT_EQ(result->f32()[k], 0.0f) << "the bad token's output, " << k;
  }
}

// ---- RMSNorm ----

// Rows of whole chunks and not (12, 1000, 4095), model widths (4096, 5120), one row and 17; the
// block-per-row kernels' range (2048 to 8192 channels in chunks) at both ends and just past it;
// the register warp kernel's lane shares of 8 and 16 chunks (2048, 4096 bf16; 2048 f32) and
// past them (5120, 8192). Each row spread (cuda::RmsNormRows) runs every shape.
const int64_t kRowShapes[][2] = {{7, 12},   {5, 64},   {33, 4096}, {3, 1000}, {1, 8},
                                 {17, 4095}, {2, 5120}, {4, 2048},  {3, 8192}, {2, 8200}};

TEST_F(CudaKernels, RmsnormForwardMatchesCpu) {
  uint32_t seed = 100;
  for (DType dtype : {DType::bf16, DType::f32})
    for (auto [rows, channels] : kRowShapes) {
      OwnedTensor x = random_cpu({rows, channels}, seed++, 3.0f), weight = random_cpu({channels}, seed++);
      OwnedTensor out({rows, channels}, DType::f32, Device::cpu), rstd({rows}, DType::f32, Device::cpu);
      rmsnorm_forward(out, rstd, x, weight, 1e-5f);
      OwnedTensor x_gpu = upload(x, dtype), weight_gpu = upload(weight, dtype);
      for (cuda::RmsNormRows spread : cuda::kRmsNormRowChoices) {
        OwnedTensor out_gpu({rows, channels}, dtype, Device::cuda), rstd_gpu({rows}, DType::f32, Device::cuda);
        cuda::rmsnorm_forward(out_gpu, rstd_gpu, x_gpu, weight_gpu, 1e-5f, spread);
        const std::string where = std::to_string(rows) + "x" + std::to_string(channels) + ", " +
                                  cuda::rmsnorm_rows_name(spread);
        EXPECT_LE(relative_error(out_gpu, out), tolerance_for(dtype)) << where;
        EXPECT_LE(relative_error(rstd_gpu, rstd), kF32Tolerance) << where;
      }
    }
}

TEST_F(CudaKernels, RmsnormBackwardMatchesCpu) {
  uint32_t seed = 200;
  for (DType dtype : {DType::bf16, DType::f32})
    for (auto [rows, channels] : kRowShapes) {
      OwnedTensor x = random_cpu({rows, channels}, seed++, 3.0f), weight = random_cpu({channels}, seed++);
      OwnedTensor dout = random_cpu({rows, channels}, seed++), dweight = random_cpu({channels}, seed++);
      OwnedTensor out({rows, channels}, DType::f32, Device::cpu), rstd({rows}, DType::f32, Device::cpu);
      rmsnorm_forward(out, rstd, x, weight, 1e-5f);
      // Both backends start from the same rstd, so the backward is compared on its own.
      OwnedTensor rstd_gpu = upload(rstd, DType::f32), dweight_gpu = upload(dweight, DType::f32);
      OwnedTensor x_gpu = upload(x, dtype), weight_gpu = upload(weight, dtype), dout_gpu = upload(dout, dtype);
      OwnedTensor dx({rows, channels}, DType::f32, Device::cpu), dx_gpu({rows, channels}, dtype, Device::cuda);
      rmsnorm_backward(dx, dweight, dout, x, weight, rstd);
      rmsnorm_backward(dx_gpu, dweight_gpu, dout_gpu, x_gpu, weight_gpu, rstd_gpu);
      EXPECT_LE(relative_error(dx_gpu, dx), tolerance_for(dtype)) << rows << "x" << channels;
      // dweight is f32 on both sides; the GPU sums rows in f32, the CPU in double.
      EXPECT_LE(relative_error(dweight_gpu, dweight), 1e-4) << rows << "x" << channels;
      // dx with the other row spreads (dweight's kernel does not depend on them).
      for (cuda::RmsNormRows spread : cuda::kRmsNormRowChoices) {
        if (spread == cuda::kDefaultRmsNormRows) continue;
        OwnedTensor spread_dx({rows, channels}, dtype, Device::cuda);
        cuda::rmsnorm_backward(spread_dx, Tensor{}, dout_gpu, x_gpu, weight_gpu, rstd_gpu, spread);
        EXPECT_LE(relative_error(spread_dx, dx), tolerance_for(dtype))
            << rows << "x" << channels << ", " << cuda::rmsnorm_rows_name(spread);
      }
    }
}

TEST_F(CudaKernels, RmsnormOnMisalignedViewsMatchesCpu) {
  uint32_t seed = 250;
  for (auto [rows, channels] : {std::pair<int64_t, int64_t>{3, 64}, {17, 4096}}) {
    OwnedTensor x = random_cpu({rows, channels}, seed++, 3.0f), weight = random_cpu({channels}, seed++);
    OwnedTensor dout = random_cpu({rows, channels}, seed++);
    OwnedTensor out({rows, channels}, DType::f32, Device::cpu), rstd({rows}, DType::f32, Device::cpu);
    OwnedTensor dx({rows, channels}, DType::f32, Device::cpu);
    rmsnorm_forward(out, rstd, x, weight, 1e-5f);
    rmsnorm_backward(dx, Tensor{}, dout, x, weight, rstd);
    MisalignedTensor x_gpu = upload_misaligned(x, DType::bf16), dout_gpu = upload_misaligned(dout, DType::bf16);
    OwnedTensor weight_gpu = upload(weight, DType::bf16), rstd_gpu({rows}, DType::f32, Device::cuda);
    MisalignedTensor out_gpu = upload_misaligned(out, DType::bf16), dx_gpu = upload_misaligned(dx, DType::bf16);
    rmsnorm_forward(out_gpu, rstd_gpu, x_gpu, weight_gpu, 1e-5f);
    rmsnorm_backward(dx_gpu, Tensor{}, dout_gpu, x_gpu, weight_gpu, rstd_gpu);
    EXPECT_LE(relative_error(out_gpu, out), kBf16Tolerance) << rows << "x" << channels;
    EXPECT_LE(relative_error(dx_gpu, dx), kBf16Tolerance) << rows << "x" << channels;
  }
}

TEST_F(CudaKernels, RmsnormDweightIsDeterministic) {
  OwnedTensor x = upload(random_cpu({301, 96}, 5), DType::bf16), weight = upload(random_cpu({96}, 6), DType::bf16);
  OwnedTensor dout = upload(random_cpu({301, 96}, 7), DType::bf16);
  OwnedTensor out({301, 96}, DType::bf16, Device::cuda), rstd({301}, DType::f32, Device::cuda);
  rmsnorm_forward(out, rstd, x, weight, 1e-6f);
  OwnedTensor dx({301, 96}, DType::bf16, Device::cuda);
  OwnedTensor first({96}, DType::f32, Device::cuda), second({96}, DType::f32, Device::cuda);
  rmsnorm_backward(dx, first, dout, x, weight, rstd);
  rmsnorm_backward(dx, second, dout, x, weight, rstd);
  OwnedTensor a = download(first), b = download(second);
  for (int64_t c = 0; c < 96; ++c) ASSERT_EQ(a->f32()[c], b->f32()[c]) << "column " << c;
}

// ---- RoPE ----

TEST_F(CudaKernels, RopeForwardAndBackwardMatchCpu) {
  // head_dim 8 / 128: whole chunks; 6 / 18: not; 1 and 17 tokens; 32 heads of 128 as in a model.
  const int64_t shapes[][3] = {{5, 3, 8}, {7, 2, 128}, {4, 4, 6}, {9, 1, 48}, {1, 32, 128}, {17, 5, 18}, {17, 8, 128}};
  RopeScaling llama3;  // Llama 3.1's
  llama3.type = RopeScalingType::llama3;
  llama3.factor = 8.0;
  llama3.low_freq_factor = 1.0;
  llama3.high_freq_factor = 4.0;
  llama3.original_max_position_embeddings = 8192;
  const std::pair<float, RopeScaling> frequency_settings[] = {
      {10000.0f, RopeScaling{}}, {1000000.0f, RopeScaling{}}, {500000.0f, llama3}};
  uint32_t seed = 300;
  for (DType dtype : {DType::bf16, DType::f32})
    for (const auto& [theta, scaling] : frequency_settings)
      for (bool backward : {false, true})
        for (auto [tokens, heads, head_dim] : shapes) {
          OwnedTensor x = random_cpu({tokens, heads, head_dim}, seed++);
          OwnedTensor positions = random_ints(tokens, 0, 4096, seed++);
          OwnedTensor x_gpu = upload(x, dtype), positions_gpu = upload(positions, DType::i32);
          OwnedTensor frequencies = rope_inverse_frequencies(head_dim, theta, scaling, Device::cpu);
          OwnedTensor frequencies_gpu = rope_inverse_frequencies(head_dim, theta, scaling, Device::cuda);
          if (backward) {
            rope_backward(x, positions, frequencies);
            rope_backward(x_gpu, positions_gpu, frequencies_gpu);
          } else {
            rope_forward(x, positions, frequencies);
            rope_forward(x_gpu, positions_gpu, frequencies_gpu);
          }
          EXPECT_LE(relative_error(x_gpu, x), tolerance_for(dtype))
              << (backward ? "backward " : "forward ") << tokens << "x" << heads << "x" << head_dim
              << " theta " << theta << " " << rope_scaling_type_name(scaling.type);
        }
}

TEST_F(CudaKernels, RopeOnMisalignedViewMatchesCpu) {
  OwnedTensor x = random_cpu({17, 4, 64}, 350);
  OwnedTensor positions = random_ints(17, 0, 4096, 351);
  OwnedTensor positions_gpu = upload(positions, DType::i32);
  MisalignedTensor x_gpu = upload_misaligned(x, DType::bf16);
  rope_forward(x, positions, rope_inverse_frequencies(64, 10000.0f, RopeScaling{}, Device::cpu));
  rope_forward(x_gpu, positions_gpu, rope_inverse_frequencies(64, 10000.0f, RopeScaling{}, Device::cuda));
  EXPECT_LE(relative_error(x_gpu, x), kBf16Tolerance);
}

// ---- SwiGLU ----

// Sizes of whole 8-element chunks (16x64, 4x1000, 3x14336) and not (7x13, 17x4095), one row.
const int64_t kElementShapes[][2] = {{7, 13}, {16, 64}, {4, 1000}, {3, 14336}, {17, 4095}, {1, 5120}};

TEST_F(CudaKernels, SwigluForwardAndBackwardMatchCpu) {
  uint32_t seed = 400;
  for (DType dtype : {DType::bf16, DType::f32})
    for (auto [rows, features] : kElementShapes) {
      OwnedTensor gate = random_cpu({rows, features}, seed++, 4.0f), up = random_cpu({rows, features}, seed++);
      OwnedTensor dout = random_cpu({rows, features}, seed++);
      OwnedTensor out({rows, features}, DType::f32, Device::cpu);
      OwnedTensor dgate({rows, features}, DType::f32, Device::cpu), dup({rows, features}, DType::f32, Device::cpu);
      swiglu_forward(out, gate, up);
      swiglu_backward(dgate, dup, dout, gate, up);
      OwnedTensor gate_gpu = upload(gate, dtype), up_gpu = upload(up, dtype), dout_gpu = upload(dout, dtype);
      OwnedTensor out_gpu({rows, features}, dtype, Device::cuda);
      OwnedTensor dgate_gpu({rows, features}, dtype, Device::cuda), dup_gpu({rows, features}, dtype, Device::cuda);
      swiglu_forward(out_gpu, gate_gpu, up_gpu);
      swiglu_backward(dgate_gpu, dup_gpu, dout_gpu, gate_gpu, up_gpu);
      EXPECT_LE(relative_error(out_gpu, out), tolerance_for(dtype)) << rows << "x" << features;
      EXPECT_LE(relative_error(dgate_gpu, dgate), tolerance_for(dtype)) << rows << "x" << features;
      EXPECT_LE(relative_error(dup_gpu, dup), tolerance_for(dtype)) << rows << "x" << features;
    }
}

TEST_F(CudaKernels, SwigluOnMisalignedViewsMatchesCpu) {
  OwnedTensor gate = random_cpu({5, 64}, 450, 4.0f), up = random_cpu({5, 64}, 451), dout = random_cpu({5, 64}, 452);
  OwnedTensor out({5, 64}, DType::f32, Device::cpu), dgate({5, 64}, DType::f32, Device::cpu);
  OwnedTensor dup({5, 64}, DType::f32, Device::cpu);
  swiglu_forward(out, gate, up);
  swiglu_backward(dgate, dup, dout, gate, up);
  MisalignedTensor gate_gpu = upload_misaligned(gate, DType::bf16), up_gpu = upload_misaligned(up, DType::bf16);
  MisalignedTensor dout_gpu = upload_misaligned(dout, DType::bf16), out_gpu = upload_misaligned(out, DType::bf16);
  MisalignedTensor dgate_gpu = upload_misaligned(dgate, DType::bf16), dup_gpu = upload_misaligned(dup, DType::bf16);
  swiglu_forward(out_gpu, gate_gpu, up_gpu);
  swiglu_backward(dgate_gpu, dup_gpu, dout_gpu, gate_gpu, up_gpu);
  EXPECT_LE(relative_error(out_gpu, out), kBf16Tolerance);
  EXPECT_LE(relative_error(dgate_gpu, dgate), kBf16Tolerance);
  EXPECT_LE(relative_error(dup_gpu, dup), kBf16Tolerance);
}

// ---- elementwise ----

TEST_F(CudaKernels, AddAndScaleMatchCpu) {
  uint32_t seed = 500;
  for (auto [rows, features] : kElementShapes)
    for (DType y_dtype : {DType::bf16, DType::f32})
      for (DType x_dtype : {DType::bf16, DType::f32}) {
        OwnedTensor y = random_cpu({rows, features}, seed++), x = random_cpu({rows, features}, seed++);
        OwnedTensor y_gpu = upload(y, y_dtype), x_gpu = upload(x, x_dtype);
        add_inplace(y, x);
        scale_inplace(y, -1.5f);
        add_inplace(y_gpu, x_gpu);
        scale_inplace(y_gpu, -1.5f);
        EXPECT_LE(relative_error(y_gpu, y), tolerance_for(y_dtype)) << rows << "x" << features;
      }
}

TEST_F(CudaKernels, DropoutMatchesCpuMaskExactly) {
  uint32_t seed = 600;
  for (auto [rows, features] : kElementShapes)
    for (float p : {0.0f, 0.1f, 0.5f}) {
      OwnedTensor x = random_cpu({rows, features}, seed++);
      OwnedTensor out({rows, features}, DType::f32, Device::cpu);
      dropout(out, x, p, 1234, 7);
      // f32: the same expression on both sides, so the same bits.
      OwnedTensor x_gpu = upload(x, DType::f32), out_gpu({rows, features}, DType::f32, Device::cuda);
      dropout(out_gpu, x_gpu, p, 1234, 7);
      OwnedTensor result = download(out_gpu);
      for (int64_t i = 0; i < x->numel(); ++i)
        ASSERT_EQ(result->f32()[i], out->f32()[i]) << "element " << i << " p " << p;
      // bf16 in place (out aliases x): the same mask, the values within bf16 rounding.
      OwnedTensor x_bf16 = upload(x, DType::bf16);
      dropout(x_bf16, x_bf16, p, 1234, 7);
      OwnedTensor result_bf16 = download(x_bf16);
      for (int64_t i = 0; i < x->numel(); ++i)
        ASSERT_EQ(result_bf16->f32()[i] == 0.0f, out->f32()[i] == 0.0f) << "mask at " << i;
      EXPECT_LE(relative_error(x_bf16, out), kBf16Tolerance);
    }
}

// ---- AdamW and the gradient norm ----

TEST_F(CudaKernels, AdamwMatchesCpuOverSeveralSteps) {
  AdamWConfig config;
  config.learning_rate = 1e-3f;
  config.weight_decay = 0.01f;
  uint32_t seed = 700;
  for (int64_t count : {37, 1024, 4099}) {
    OwnedTensor param = random_cpu({count}, seed++), m({count}, DType::f32, Device::cpu);
    OwnedTensor v({count}, DType::f32, Device::cpu);
    OwnedTensor param_gpu = upload(param, DType::f32), m_gpu = upload(m, DType::f32);
    OwnedTensor v_gpu = upload(v, DType::f32);
    for (int64_t step = 1; step <= 5; ++step) {
      OwnedTensor grad = random_cpu({count}, seed++, 0.1f);
      OwnedTensor grad_gpu = upload(grad, DType::f32);
      adamw_update(param, grad, m, v, config, 2e-3f, step, 0.5f);
      adamw_update(param_gpu, grad_gpu, m_gpu, v_gpu, config, 2e-3f, step, 0.5f);
    }
    // Same f32 formula in the same order; only FMA contraction on the GPU differs (an ulp). The
    // emulated kernels compiled with contraction (-march=x86-64-v3 -ffp-contract=fast) give up to
    // 1.1e-7 in this test and the next, 9 times below 1e-6.
    EXPECT_LE(relative_error(param_gpu, param), 1e-6) << count;
    EXPECT_LE(relative_error(m_gpu, m), 1e-6) << count;
    EXPECT_LE(relative_error(v_gpu, v), 1e-6) << count;
  }
}

// The optimizer's form: more tensors than one launch takes (64), sizes of whole chunks and not,
// an empty one, and one whose views start misaligned.
TEST_F(CudaKernels, AdamwOverManyTensorsMatchesCpu) {
  AdamWConfig config;
  config.learning_rate = 1e-3f;
  config.weight_decay = 0.01f;
  uint32_t seed = 750;
  std::vector<OwnedTensor> cpu_memory;
  std::vector<MisalignedTensor> gpu_memory;
  std::vector<AdamWTensor> cpu_tensors, gpu_tensors;
  for (int t = 0; t < 70; ++t) {
    const int64_t count = t == 5 ? 0 : (t % 3 == 0 ? 4096 : 37 + 16 * t);
    AdamWTensor cpu_tensor, gpu_tensor;
    for (Tensor AdamWTensor::*member : {&AdamWTensor::param, &AdamWTensor::grad, &AdamWTensor::m, &AdamWTensor::v}) {
      // Moments start non-zero, as after earlier steps; v must be positive.
      cpu_memory.push_back(random_cpu({count}, seed++, 0.1f));
      if (member == &AdamWTensor::v)
        for (int64_t i = 0; i < count; ++i) cpu_memory.back()->f32()[i] = std::abs(cpu_memory.back()->f32()[i]);
      cpu_tensor.*member = cpu_memory.back();
      if (t == 7) {
        gpu_memory.push_back(upload_misaligned(cpu_memory.back(), DType::f32));
      } else {
        OwnedTensor aligned = upload(cpu_memory.back(), DType::f32);
        gpu_memory.push_back(MisalignedTensor{std::move(aligned), {}});
        gpu_memory.back().view = gpu_memory.back().memory.view;
      }
      gpu_tensor.*member = gpu_memory.back().view;
    }
    cpu_tensors.push_back(cpu_tensor);
    gpu_tensors.push_back(gpu_tensor);
  }
  for (int64_t step = 1; step <= 3; ++step) {
    adamw_update_all(cpu_tensors, config, 2e-3f, step, 0.5f);
    adamw_update_all(gpu_tensors, config, 2e-3f, step, 0.5f);
  }
  // Same f32 formula in the same order; only FMA contraction on the GPU differs (an ulp).
  for (size_t t = 0; t < cpu_tensors.size(); ++t) {
    if (cpu_tensors[t].param.numel() == 0) continue;
    EXPECT_LE(relative_error(gpu_tensors[t].param, cpu_tensors[t].param), 1e-6) << "tensor " << t;
    EXPECT_LE(relative_error(gpu_tensors[t].m, cpu_tensors[t].m), 1e-6) << "tensor " << t;
    EXPECT_LE(relative_error(gpu_tensors[t].v, cpu_tensors[t].v), 1e-6) << "tensor " << t;
  }
  std::vector<Tensor> cpu_grads, gpu_grads;
  for (size_t t = 0; t < cpu_tensors.size(); ++t) {
    cpu_grads.push_back(cpu_tensors[t].grad);
    gpu_grads.push_back(gpu_tensors[t].grad);
  }
  double cpu = sum_of_squares_all(cpu_grads), gpu = sum_of_squares_all(gpu_grads);
  EXPECT_NEAR(gpu, cpu, 1e-12 * cpu) << "squares are exact in double; only the order of sums differs";
  EXPECT_EQ(gpu, sum_of_squares_all(gpu_grads)) << "the norm must be reproducible";
  EXPECT_EQ(sum_of_squares_all(std::vector<Tensor>{}), 0.0);
  EXPECT_NO_THROW(adamw_update_all({}, config, 2e-3f, 1, 1.0f));
}

TEST_F(CudaKernels, SumOfSquaresMatchesCpuAndIsDeterministic) {
  uint32_t seed = 800;
  for (int64_t count : {1, 37, 100000, 3000001}) {
    OwnedTensor x = random_cpu({count}, seed++);
    OwnedTensor x_gpu = upload(x, DType::f32);
    double cpu = sum_of_squares(x);
    double first = sum_of_squares(x_gpu), second = sum_of_squares(x_gpu);
    // Squares of f32 values are exact in double; only the order of the double sums differs. With
    // these bf16-valued inputs (at least 0.05) the squares are multiples of 2^-24, at most 1, and the
    // sums stay below 2^22, so every partial sum is exact too and any order gives the same bits.
    EXPECT_NEAR(first, cpu, 1e-12 * cpu) << count;
    EXPECT_EQ(first, second) << count;
  }
}

// ---- fused log-probabilities ----

struct LogprobsInputs {
  OwnedTensor hidden, lm_head, labels, dlogps;
};

LogprobsInputs logprobs_inputs(int64_t tokens, int64_t channels, int64_t vocab, uint32_t seed) {
  LogprobsInputs inputs{random_cpu({tokens, channels}, seed), random_cpu({vocab, channels}, seed + 1),
                        random_ints(tokens, 0, int32_t(vocab), seed + 2),
                        random_cpu({tokens}, seed + 3)};
  // Prompt and padding tokens carry no label: every third token from the second on, so that a
  // one-token case keeps its label and has something to compare.
  for (int64_t n = 1; n < tokens; n += 3) inputs.labels->i32()[n] = n % 2 ? -1 : -100;
  return inputs;
}

TEST_F(CudaKernels, LogprobsForwardAndBackwardMatchCpu) {
  // With 8 tokens a chunk: 37 and 17 tokens end in a partial chunk, 1 token is a chunk of one;
  // vocabularies of 1031 and 77 are odd, 32000 is Mistral's.
  const int64_t shapes[][3] = {{37, 24, 1031}, {5, 64, 32000}, {64, 8, 50}, {1, 16, 77}, {17, 40, 1000}};
  uint32_t seed = 900;
  for (int64_t chunk_tokens : {0, 8})  // 0: the default (one chunk here); 8: several chunks
    for (DType dtype : {DType::bf16, DType::f32})
      for (auto [tokens, channels, vocab] : shapes) {
        set_logprobs_chunk_tokens(chunk_tokens);
        LogprobsInputs in = logprobs_inputs(tokens, channels, vocab, seed += 4);
        Arena cpu_scratch(Device::cpu), gpu_scratch(Device::cuda);
        OwnedTensor logps({tokens}, DType::f32, Device::cpu), lse({tokens}, DType::f32, Device::cpu);
        OwnedTensor sums({tokens}, DType::f32, Device::cpu), dhidden({tokens, channels}, DType::f32, Device::cpu);
        logprobs_forward(logps, lse, sums, in.hidden, in.lm_head, in.labels, cpu_scratch);
        logprobs_backward(dhidden, in.dlogps, in.hidden, in.lm_head, in.labels, lse, cpu_scratch);

        OwnedTensor hidden_gpu = upload(in.hidden, dtype), head_gpu = upload(in.lm_head, dtype);
        OwnedTensor labels_gpu = upload(in.labels, DType::i32), dlogps_gpu = upload(in.dlogps, DType::f32);
        OwnedTensor logps_gpu({tokens}, DType::f32, Device::cuda), lse_gpu({tokens}, DType::f32, Device::cuda);
        OwnedTensor sums_gpu({tokens}, DType::f32, Device::cuda);
        OwnedTensor dhidden_gpu({tokens, channels}, dtype, Device::cuda);
        logprobs_forward(logps_gpu, lse_gpu, sums_gpu, hidden_gpu, head_gpu, labels_gpu, gpu_scratch);
        logprobs_backward(dhidden_gpu, dlogps_gpu, hidden_gpu, head_gpu, labels_gpu, lse_gpu, gpu_scratch);
        set_logprobs_chunk_tokens(0);

        // The logits are f32 on both sides (bf16 products are exact in f32), so logp, lse and
        // the logit sums agree to f32 summation order: 1e-4 leaves room for V = 32000 terms.
        std::string where = std::string(dtype_name(dtype)) + " tokens " + std::to_string(tokens) +
                            " vocab " + std::to_string(vocab) + " chunk " + std::to_string(chunk_tokens);
        EXPECT_LE(relative_error(logps_gpu, logps), 1e-4) << where;
        EXPECT_LE(relative_error(lse_gpu, lse), 1e-5) << where;
        EXPECT_LE(relative_error(sums_gpu, sums), 1e-4) << where;
        // dz goes through the head's dtype (bf16: 0.2% per element) before the second GEMM, a
        // sum over the vocabulary (f32: the top).
        EXPECT_LE(relative_error(dhidden_gpu, dhidden), dtype == DType::bf16 ? kBf16Tolerance : kF32VocabularySumTolerance)
            << where;
        OwnedTensor dhidden_result = download(dhidden_gpu);
        for (int64_t n = 0; n < tokens; ++n) {
          if (in.labels->i32()[n] >= 0) continue;
          for (int64_t c = 0; c < channels; ++c)
            ASSERT_EQ(dhidden_result->f32()[n * channels + c], 0.0f) << "unlabelled token " << n;
        }
      }
}

// Labels are not read back per call: a label past the vocabulary is raised at the next
// synchronisation with the CPU's message.
TEST_F(CudaKernels, LogprobsRejectsLabelOutsideVocabulary) {
  LogprobsInputs in = logprobs_inputs(6, 8, 20, 77);
  in.labels->i32()[4] = 20;
  OwnedTensor hidden = upload(in.hidden, DType::bf16), head = upload(in.lm_head, DType::bf16);
  OwnedTensor labels = upload(in.labels, DType::i32);
  OwnedTensor logps({6}, DType::f32, Device::cuda), lse({6}, DType::f32, Device::cuda);
  OwnedTensor sums({6}, DType::f32, Device::cuda);
  Arena scratch(Device::cuda);
  logprobs_forward(logps, lse, sums, hidden, head, labels, scratch);
  try {
    download(logps);
    FAIL() << "a label outside the vocabulary was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("labels[4] = 20 is outside the vocabulary [0, 20)"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace cst
