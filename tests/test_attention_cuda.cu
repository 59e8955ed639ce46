// The CUDA attention (flash and row-wise kernels) against the CPU reference op (kernels/attention.cpp, itself checked
// against finite differences and torch in the CPU tests).
//
// Inputs are drawn, rounded to bf16 and then given to both backends, so the two see the same
// numbers and only the arithmetic differs. Errors are measured over whole tensors,
// ||gpu - cpu|| / ||cpu||. The expected size, from bf16's 8-bit significand (unit roundoff
// u = 2^-8 ~ 3.9e-3):
//   out, dq, dk, dv are stored in bf16, which alone costs ~u/sqrt(12)*sqrt(2) ~ 1.6e-3 RMS; the
//   probabilities (and dS) are rounded to bf16 before they meet V (or Q, K) in the tensor cores,
//   which adds a similar, partly averaged-out amount. The host model of these kernels
//   (tests/test_attention_emulated.cpp) gives 1.6e-3..1.8e-3 for out and 2.1e-3..2.5e-3 for the
//   gradients on shapes like these, so kOutputTolerance = 1e-2 leaves a 4x margin (for the
//   tensor cores' own summation order) and still catches any indexing or masking error (those
//   give errors of order 1e-1 to 1).
//   lse is computed and stored in f32 from the exact bf16 products: only f32 summation order
//   and exp2/log2 rounding differ, ~1e-7; kLseTolerance = 1e-5.
// The row-wise kernels (head dims other than 64 and 128) keep everything in f32 and round only
// the stored outputs, ~1.6e-3: the same tolerances hold with a wider margin.
// The emulated GPU (cst_emulated_tests: these kernels on these shapes, under all three thread
// schedules) gives, flash / row-wise: out 1.6e-3..1.9e-3 / 1.5e-3..1.6e-3, dq, dk and dv
// 2.2e-3..2.4e-3 / 1.6e-3..1.7e-3 (4.2 times below kOutputTolerance at least), lse 3e-8..6e-8
// (160 times below kLseTolerance). Another summation order moves single bf16 roundings, not the
// size of these whole-tensor errors.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_warpgroup.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/device.h"
#include "tests/op_reference.h"

namespace cst {
namespace {

constexpr double kOutputTolerance = 1e-2;
constexpr double kLseTolerance = 1e-5;

struct AttentionCase {
  const char* name;
  std::vector<int32_t> lengths;  // one entry per packed sequence
  AttentionShape shape;
};

void PrintTo(const AttentionCase& c, std::ostream* out) { *out << c.name; }

std::vector<int32_t> offsets_of(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> offsets = {0};
  for (int32_t length : lengths) offsets.push_back(offsets.back() + length);
  return offsets;
}

// Random values already representable in bf16, so the bf16 copy on the GPU is exact.
std::vector<float> bf16_values(test::Rng& rng, int64_t count, double magnitude) {
  std::vector<float> values = rng.floats(count, -magnitude, magnitude);
  for (float& value : values) value = bf16_to_f32(f32_to_bf16(value));
  return values;
}

OwnedTensor on_cpu(const std::vector<int64_t>& shape, const std::vector<float>& values) {
  OwnedTensor t(shape, DType::f32, Device::cpu);
  std::copy(values.begin(), values.end(), t->f32());
  return t;
}

// The values on the GPU as `dtype` (bf16 values stay exact when they came from bf16_values).
OwnedTensor on_gpu(const std::vector<int64_t>& shape, const std::vector<float>& values,
                   DType dtype) {
  OwnedTensor device(shape, dtype, Device::cuda);
  copy_tensor(device, on_cpu(shape, values));
  return device;
}

double relative_error(const std::vector<float>& gpu, const Tensor& cpu) {
  return test::relative_error(gpu, test::to_double(test::to_vector(cpu)));
}

// A case's inputs, drawn and rounded to bf16 so that both backends see the same numbers: q, k,
// v and dout as floats for the CPU and as bf16 tensors on the GPU, with the shapes of every
// tensor. |q|, |k| up to 2 spread the scores over several units, so the softmax is neither flat
// nor one-hot and every key's contribution matters.
struct AttentionProblem {
  std::vector<int32_t> cu_seqlens;
  std::vector<int64_t> q_shape, kv_shape, lse_shape;
  std::vector<float> q, k, v, dout;
  OwnedTensor gpu_q, gpu_k, gpu_v, gpu_dout;

  AttentionProblem(const AttentionCase& c, uint64_t seed) : cu_seqlens(offsets_of(c.lengths)) {
    const int64_t tokens = cu_seqlens.back(), heads = c.shape.heads,
                  kv_heads = c.shape.kv_heads, dim = c.shape.head_dim;
    q_shape = {tokens, heads, dim};
    kv_shape = {tokens, kv_heads, dim};
    lse_shape = {heads, tokens};
    test::Rng rng(seed + tokens * 7 + heads);
    q = bf16_values(rng, tokens * heads * dim, 2.0);
    k = bf16_values(rng, tokens * kv_heads * dim, 2.0);
    v = bf16_values(rng, tokens * kv_heads * dim, 1.0);
    dout = bf16_values(rng, tokens * heads * dim, 1.0);
    gpu_q = on_gpu(q_shape, q, DType::bf16);
    gpu_k = on_gpu(kv_shape, k, DType::bf16);
    gpu_v = on_gpu(kv_shape, v, DType::bf16);
    gpu_dout = on_gpu(q_shape, dout, DType::bf16);
  }
};

class AttentionCuda : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible: the attention kernels need one";
  }
};

// One forward and backward on both backends, then every output compared.
TEST_P(AttentionCuda, MatchesCpuReference) {
  const AttentionShape& shape = GetParam().shape;
  const AttentionProblem in(GetParam(), 1000);
  const auto& [cu_seqlens, q_shape, kv_shape, lse_shape, q, k, v, dout, gpu_q, gpu_k, gpu_v,
               gpu_dout] = in;

  OwnedTensor cpu_q = on_cpu(q_shape, q), cpu_k = on_cpu(kv_shape, k), cpu_v = on_cpu(kv_shape, v);
  OwnedTensor cpu_dout = on_cpu(q_shape, dout);
  OwnedTensor cpu_out(q_shape, DType::f32, Device::cpu), cpu_lse(lse_shape, DType::f32, Device::cpu);
  OwnedTensor cpu_dq(q_shape, DType::f32, Device::cpu), cpu_dk(kv_shape, DType::f32, Device::cpu),
      cpu_dv(kv_shape, DType::f32, Device::cpu);
  attention_forward(cpu_out, cpu_lse, cpu_q, cpu_k, cpu_v, cu_seqlens, shape);

  OwnedTensor gpu_out(q_shape, DType::bf16, Device::cuda), gpu_lse(lse_shape, DType::f32, Device::cuda);
  OwnedTensor gpu_dq(q_shape, DType::bf16, Device::cuda), gpu_dk(kv_shape, DType::bf16, Device::cuda),
      gpu_dv(kv_shape, DType::bf16, Device::cuda);
  attention_forward(gpu_out, gpu_lse, gpu_q, gpu_k, gpu_v, cu_seqlens, shape);
  attention_backward(gpu_dq, gpu_dk, gpu_dv, gpu_dout, gpu_q, gpu_k, gpu_v, gpu_out, gpu_lse,
                     cu_seqlens, shape);

  const std::vector<float> out_from_gpu = to_host_f32(gpu_out), lse_from_gpu = to_host_f32(gpu_lse);
  EXPECT_LT(relative_error(out_from_gpu, cpu_out), kOutputTolerance) << "out";
  EXPECT_LT(relative_error(lse_from_gpu, cpu_lse), kLseTolerance) << "lse";

  // The CPU backward starts from the GPU's forward results (out in bf16), as the GPU backward
  // does: D = dO . O cancels against dP where a query sees few keys (window 2), and the bf16
  // rounding of out would otherwise dominate the comparison there.
  attention_backward(cpu_dq, cpu_dk, cpu_dv, cpu_dout, cpu_q, cpu_k, cpu_v,
                     on_cpu(q_shape, out_from_gpu), on_cpu(lse_shape, lse_from_gpu), cu_seqlens,
                     shape);
  EXPECT_LT(relative_error(to_host_f32(gpu_dq), cpu_dq), kOutputTolerance) << "dq";
  EXPECT_LT(relative_error(to_host_f32(gpu_dk), cpu_dk), kOutputTolerance) << "dk";
  EXPECT_LT(relative_error(to_host_f32(gpu_dv), cpu_dv), kOutputTolerance) << "dv";

  // Deterministic: a second backward gives the same bits (no atomics, fixed summation order).
  OwnedTensor again_dq(q_shape, DType::bf16, Device::cuda), again_dk(kv_shape, DType::bf16, Device::cuda),
      again_dv(kv_shape, DType::bf16, Device::cuda);
  attention_backward(again_dq, again_dk, again_dv, gpu_dout, gpu_q, gpu_k, gpu_v, gpu_out, gpu_lse,
                     cu_seqlens, shape);
  EXPECT_EQ(to_host_f32(again_dq), to_host_f32(gpu_dq)) << "dq differs between two runs";
  EXPECT_EQ(to_host_f32(again_dk), to_host_f32(gpu_dk)) << "dk differs between two runs";
  EXPECT_EQ(to_host_f32(again_dv), to_host_f32(gpu_dv)) << "dv differs between two runs";

  // dq added by the dK/dV blocks (kernels/attention.h), in key order or by atomics: within the
  // same tolerance, while dk and dv keep the default backward's bits; in key order, the same dq
  // bits on a second run. Flash head dims only; the others ignore the mode.
  for (AttentionBackward mode : {AttentionBackward::ordered_dq, AttentionBackward::atomic_dq}) {
    const char* name = mode == AttentionBackward::ordered_dq ? "ordered" : "atomic";
    auto backward_dq = [&] {
      OwnedTensor mode_dq(q_shape, DType::bf16, Device::cuda), mode_dk(kv_shape, DType::bf16, Device::cuda),
          mode_dv(kv_shape, DType::bf16, Device::cuda);
      attention_backward(mode_dq, mode_dk, mode_dv, gpu_dout, gpu_q, gpu_k, gpu_v, gpu_out, gpu_lse,
                         cu_seqlens, shape, mode);
      EXPECT_EQ(to_host_f32(mode_dk), to_host_f32(gpu_dk)) << "dk beside the " << name << " dq";
      EXPECT_EQ(to_host_f32(mode_dv), to_host_f32(gpu_dv)) << "dv beside the " << name << " dq";
      return to_host_f32(mode_dq);
    };
    const std::vector<float> mode_dq = backward_dq();
    EXPECT_LT(relative_error(mode_dq, cpu_dq), kOutputTolerance) << name << " dq";
    if (mode == AttentionBackward::ordered_dq) {
      EXPECT_EQ(backward_dq(), mode_dq) << "ordered dq differs between two runs";
    }
  }

  // rows64 and rows128 give the op's bits (kernels/attention.h: the same sums in the same order);
  // rows128_steps32 rounds differently and is held to the reference's tolerances;
  // rows128_warpgroups has a suite of its own (AttentionHopper, below).
  for (auto tile : cuda::kForwardQueryTiles) {
    if (tile == cuda::ForwardQueryTile::rows128_warpgroups) continue;
    const std::string name = std::string("forward tile ") + cuda::forward_query_tile_name(tile);
    OwnedTensor tile_out(q_shape, DType::bf16, Device::cuda);
    OwnedTensor tile_lse(lse_shape, DType::f32, Device::cuda);
    cuda::attention_forward(tile_out, tile_lse, gpu_q, gpu_k, gpu_v, cu_seqlens, shape, tile);
    if (tile == cuda::ForwardQueryTile::rows128_steps32) {
      EXPECT_LT(relative_error(to_host_f32(tile_out), cpu_out), kOutputTolerance) << "out of the " << name;
      EXPECT_LT(relative_error(to_host_f32(tile_lse), cpu_lse), kLseTolerance) << "lse of the " << name;
    } else {
      EXPECT_EQ(to_host_f32(tile_out), out_from_gpu) << "out of the " << name;
      EXPECT_EQ(to_host_f32(tile_lse), lse_from_gpu) << "lse of the " << name;
    }
  }
}

// The Hopper kernels (ForwardQueryTile::rows128_warpgroups, BackwardKernels: warpgroup
// multiplies, sm_90a) on the flash head dims, in a suite of its own so that tools/gpu_check.sh
// runs it in a process of its own: a kernel that faults poisons the CUDA context of every test
// after it in its process.
class AttentionHopper : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible: the attention kernels need one";
    if (!cuda::warpgroup_kernels_run())
      GTEST_SKIP() << "the warpgroup kernels need a GPU of compute capability 9.0";
  }
};

// Against the CPU reference within the tolerances above (its sums are the tensor cores', grouped
// unlike the other tiles'), and the same bits on a second run.
TEST_P(AttentionHopper, WarpgroupForwardMatchesCpuReference) {
  const AttentionShape& shape = GetParam().shape;
  const AttentionProblem in(GetParam(), 3000);
  const auto& [cu_seqlens, q_shape, kv_shape, lse_shape, q, k, v, dout, gpu_q, gpu_k, gpu_v,
               gpu_dout] = in;
  OwnedTensor cpu_out(q_shape, DType::f32, Device::cpu), cpu_lse(lse_shape, DType::f32, Device::cpu);
  attention_forward(cpu_out, cpu_lse, on_cpu(q_shape, q), on_cpu(kv_shape, k), on_cpu(kv_shape, v),
                    cu_seqlens, shape);
  auto forward = [&] {
    OwnedTensor out(q_shape, DType::bf16, Device::cuda), lse(lse_shape, DType::f32, Device::cuda);
    cuda::attention_forward(out, lse, gpu_q, gpu_k, gpu_v, cu_seqlens, shape,
                            cuda::ForwardQueryTile::rows128_warpgroups);
    return std::pair{to_host_f32(out), to_host_f32(lse)};
  };
  const auto [out, lse] = forward();
  const double out_error = relative_error(out, cpu_out), lse_error = relative_error(lse, cpu_lse);
  EXPECT_LT(out_error, kOutputTolerance) << "out";
  EXPECT_LT(lse_error, kLseTolerance) << "lse";
  RecordProperty("relative_errors",
                 "out " + std::to_string(out_error) + " lse " + std::to_string(lse_error));
  const auto [out_again, lse_again] = forward();
  EXPECT_EQ(out_again, out) << "out differs between two runs";
  EXPECT_EQ(lse_again, lse) << "lse differs between two runs";
}

// The backward with each choice of Hopper kernels: dq, dk and dv against the CPU reference within
// the tolerances above, the same bits on a second run, and the outputs of a pass left on
// mma.sync the bits of the all-mma.sync backward. On the emulated GPU only both passes on
// warpgroups, once: the tile test (tests/test_attention_emulated.cpp) runs each pass alone, a
// second run there cannot differ, and each backward takes seconds.
#ifdef CST_CUDA_EMULATION
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

TEST_P(AttentionHopper, WarpgroupBackwardMatchesCpuReference) {
  const AttentionShape& shape = GetParam().shape;
  const AttentionProblem in(GetParam(), 4000);
  const auto& [cu_seqlens, q_shape, kv_shape, lse_shape, q, k, v, dout, gpu_q, gpu_k, gpu_v,
               gpu_dout] = in;
  OwnedTensor gpu_out(q_shape, DType::bf16, Device::cuda), gpu_lse(lse_shape, DType::f32, Device::cuda);
  attention_forward(gpu_out, gpu_lse, gpu_q, gpu_k, gpu_v, cu_seqlens, shape);
  // The CPU backward from the GPU's forward results, as in AttentionCuda.MatchesCpuReference.
  OwnedTensor cpu_dq(q_shape, DType::f32, Device::cpu), cpu_dk(kv_shape, DType::f32, Device::cpu),
      cpu_dv(kv_shape, DType::f32, Device::cpu);
  attention_backward(cpu_dq, cpu_dk, cpu_dv, on_cpu(q_shape, dout), on_cpu(q_shape, q),
                     on_cpu(kv_shape, k), on_cpu(kv_shape, v),
                     on_cpu(q_shape, to_host_f32(gpu_out)), on_cpu(lse_shape, to_host_f32(gpu_lse)),
                     cu_seqlens, shape);
  struct Gradients {
    std::vector<float> dq, dk, dv;
  };
  auto backward = [&](cuda::BackwardKernels kernels) {
    OwnedTensor dq(q_shape, DType::bf16, Device::cuda), dk(kv_shape, DType::bf16, Device::cuda),
        dv(kv_shape, DType::bf16, Device::cuda);
    cuda::attention_backward(dq, dk, dv, gpu_dout, gpu_q, gpu_k, gpu_v, gpu_out, gpu_lse,
                             cu_seqlens, shape, AttentionBackward::recompute_dq, kernels);
    return Gradients{to_host_f32(dq), to_host_f32(dk), to_host_f32(dv)};
  };
  const Gradients mma = kEmulated ? Gradients{} : backward(cuda::BackwardKernels::mma);
  std::string errors;
  for (cuda::BackwardKernels kernels : cuda::kBackwardKernels) {
    if (kernels == cuda::BackwardKernels::mma) continue;
    if (kEmulated && kernels != cuda::BackwardKernels::warpgroups) continue;
    const std::string name = cuda::backward_kernels_name(kernels);
    const Gradients hopper = backward(kernels);
    const double dq_error = relative_error(hopper.dq, cpu_dq);
    const double dk_error = relative_error(hopper.dk, cpu_dk);
    const double dv_error = relative_error(hopper.dv, cpu_dv);
    EXPECT_LT(dq_error, kOutputTolerance) << name << " dq";
    EXPECT_LT(dk_error, kOutputTolerance) << name << " dk";
    EXPECT_LT(dv_error, kOutputTolerance) << name << " dv";
    errors += name + " dq " + std::to_string(dq_error) + " dk " + std::to_string(dk_error) +
              " dv " + std::to_string(dv_error) + "; ";
    if (kernels == cuda::BackwardKernels::warpgroup_dq) {
      EXPECT_EQ(hopper.dk, mma.dk) << "dk beside the warpgroup dQ pass";
      EXPECT_EQ(hopper.dv, mma.dv) << "dv beside the warpgroup dQ pass";
    }
    if (kernels == cuda::BackwardKernels::warpgroup_dkdv) {
      EXPECT_EQ(hopper.dq, mma.dq) << "dq beside the warpgroup dK/dV pass";
    }
    if (kEmulated) continue;
    const Gradients again = backward(kernels);
    EXPECT_EQ(again.dq, hopper.dq) << name << " dq differs between two runs";
    EXPECT_EQ(again.dk, hopper.dk) << name << " dk differs between two runs";
    EXPECT_EQ(again.dv, hopper.dv) << name << " dv differs between two runs";
  }
  RecordProperty("relative_errors", errors);
}

// Lengths cover 0, 1, odd lengths, exact tiles (64) and tails (65, 130, 200); windows below, at and
// above the 64-row tile; GQA group sizes 1, 4 and 8; head dims 64 and 128 (the flash kernels) and
// others (the row-wise kernels). A query that sees only
// itself (length 1, window 1) has dq = dk = 0 exactly, so such rows are mixed into batches with
// longer sequences: a whole tensor of zeros has no relative error to measure.
const std::vector<AttentionCase> kCases = {
    AttentionCase{"causal_mha_d64", {1, 17, 64, 130}, {4, 4, 64, 0}},
    AttentionCase{"causal_gqa4_d128", {200, 1, 63}, {8, 2, 128, 0}},
    AttentionCase{"window48_gqa8_d128", {129, 5, 1}, {8, 1, 128, 48}},
    AttentionCase{"window64_gqa8_d64", {257}, {16, 2, 64, 64}},
    AttentionCase{"window100_gqa4_d64", {3, 190, 65}, {4, 1, 64, 100}},
    AttentionCase{"window2_mha_d128", {70, 1, 2}, {2, 2, 128, 2}},
    AttentionCase{"empty_sequences_d64", {0, 150, 0, 3}, {2, 2, 64, 64}},
    // Other head dims run the row-wise kernels (kernels/attention_rowwise.cuh): the test and
    // demo models' 12, 16 and 24, one that is not a multiple of 32, and the largest.
    AttentionCase{"rowwise_causal_gqa2_d12", {1, 17, 70, 5}, {4, 2, 12, 0}},
    AttentionCase{"rowwise_window8_gqa4_d16", {0, 40, 3}, {8, 2, 16, 8}},
    AttentionCase{"rowwise_causal_mha_d24", {33, 1, 64}, {3, 3, 24, 0}},
    AttentionCase{"rowwise_window2_gqa8_d100", {45, 1, 2}, {8, 1, 100, 2}},
    AttentionCase{"rowwise_causal_gqa2_d256", {20, 9}, {2, 1, 256, 0}}};

std::string case_name(const ::testing::TestParamInfo<AttentionCase>& info) {
  return info.param.name;
}

// The cases of the flash head dims, 64 and 128.
std::vector<AttentionCase> flash_cases() {
  std::vector<AttentionCase> cases;
  for (const AttentionCase& c : kCases)
    if (c.shape.head_dim == 64 || c.shape.head_dim == 128) cases.push_back(c);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCuda, ::testing::ValuesIn(kCases), case_name);
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionHopper, ::testing::ValuesIn(flash_cases()), case_name);

// Head dims above 256 would need more than 8 values per lane in the row-wise kernels.
TEST(AttentionCudaArguments, RejectsUnsupportedHeadDim) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const AttentionShape shape{2, 2, 264, 0};
  OwnedTensor q({3, 2, 264}, DType::bf16, Device::cuda), k({3, 2, 264}, DType::bf16, Device::cuda),
      v({3, 2, 264}, DType::bf16, Device::cuda), out({3, 2, 264}, DType::bf16, Device::cuda),
      lse({2, 3}, DType::f32, Device::cuda);
  try {
    attention_forward(out, lse, q, k, v, {0, 3}, shape);
    ADD_FAILURE() << "head_dim 264 was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("head_dim 264 is not supported (1 to 256"), std::string::npos)
        << error.what();
  }
}

// ---- The Hopper products alone ----
//
// Each warpgroup product of the Hopper kernels (kernels/attention_warpgroup.cuh), run by one
// warpgroup on tiles loaded as those kernels load them (cp.async into 128-byte-swizzled panels)
// and holding small integers: exact in bf16, with every f32 sum of their products exact, so the
// result must equal the host's sums bit for bit. Should the Hopper attention kernels fail on a
// GPU, these tell whether the products themselves (descriptors, swizzle, fragment layouts) are
// wrong or the kernels around them.

namespace flash = cuda::flash;

// A warpgroup's 64 x kColumns accumulator (thread t: warp t / 32 owns rows 16 (t / 32) .. + 15,
// as C fragments) to or from a row-major (64, kColumns) array.
template <int kColumns>
__device__ void store_fragments(float* matrix, const float (&fragments)[kColumns / 8][4], int thread) {
  const int lane = thread % 32, row0 = thread / 32 * 16;
  for (int n = 0; n < kColumns / 8; ++n)
    for (int e = 0; e < 4; ++e)
      matrix[(row0 + flash::fragment_row(lane, e)) * kColumns + flash::fragment_col(lane, n, e)] =
          fragments[n][e];
}

template <int kColumns>
__device__ void load_fragments(float (&fragments)[kColumns / 8][4], const float* matrix, int thread) {
  const int lane = thread % 32, row0 = thread / 32 * 16;
  for (int n = 0; n < kColumns / 8; ++n)
    for (int e = 0; e < 4; ++e)
      fragments[n][e] =
          matrix[(row0 + flash::fragment_row(lane, e)) * kColumns + flash::fragment_col(lane, n, e)];
}

// Starts copying a row-major (64, kHeadDim) matrix into a tile in TileLayout::panels.
template <int kHeadDim>
__device__ void load_panel_tile(flash::bf16* tile, const flash::bf16* matrix, int thread) {
  flash::load_tile_async<kHeadDim, flash::TileLayout::panels, flash::kWarpgroupThreads>(
      tile, matrix, 1, flash::tile_source(0, flash::kTileRows, 0, 0), thread);
}

template <int kHeadDim>
constexpr int two_tiles_shared_bytes() {
  return 2 * flash::kTileRows * kHeadDim * int(sizeof(flash::bf16)) + flash::kSwizzleAtomBytes;
}

// product (64, 64) = left (64, kHeadDim) right (64, kHeadDim)^T: S = Q K^T.
template <int kHeadDim>
__global__ void rows_times_rows_kernel(float* product, const flash::bf16* left,
                                       const flash::bf16* right) {
  const int thread = threadIdx.x;
  flash::bf16* left_tile =
      flash::align_to_swizzle_atom(reinterpret_cast<char*>(cuda::dynamic_shared_memory()));
  flash::bf16* right_tile = left_tile + flash::kTileRows * kHeadDim;
  load_panel_tile<kHeadDim>(left_tile, left, thread);
  load_panel_tile<kHeadDim>(right_tile, right, thread);
  flash::copy_async_commit();
  flash::wait_for_tiles();
  float result[flash::kTileRows / 8][4];
  flash::warpgroup_fence();
  flash::start_rows_times_rows<kHeadDim>(result, left_tile, right_tile);
  flash::warpgroup_wait<0>();
  flash::hold_registers(result);
  store_fragments<flash::kTileRows>(product, result, thread);
}

// result (64, kHeadDim) = initial + weights (64, 64) tile (64, kHeadDim): O += P V, the weights
// going from C fragments to bf16 A fragments as the softmax's do.
template <int kHeadDim>
__global__ void weights_times_tile_kernel(float* result, const float* initial, const float* weights,
                                          const flash::bf16* tile) {
  const int thread = threadIdx.x;
  flash::bf16* shared_tile =
      flash::align_to_swizzle_atom(reinterpret_cast<char*>(cuda::dynamic_shared_memory()));
  load_panel_tile<kHeadDim>(shared_tile, tile, thread);
  flash::copy_async_commit();
  float weight_values[flash::kTileRows / 8][4], accumulator[kHeadDim / 8][4];
  uint32_t weight_fragments[flash::kTileRows / 16][4];
  load_fragments<flash::kTileRows>(weight_values, weights, thread);
  flash::pack_a_fragments<flash::kTileRows>(weight_fragments, weight_values);
  load_fragments<kHeadDim>(accumulator, initial, thread);
  flash::wait_for_tiles();
  flash::warpgroup_fence();
  flash::start_accumulate_weights_times_tile<kHeadDim>(accumulator, weight_fragments, shared_tile);
  flash::warpgroup_wait<0>();
  flash::hold_registers(accumulator);
  flash::hold_registers(weight_fragments);
  store_fragments<kHeadDim>(result, accumulator, thread);
}

// Integers in [-4, 4]: a sum of 128 products of two stays below 2^11, far inside f32's 2^24.
std::vector<float> small_integers(test::Rng& rng, int64_t count) {
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = float(rng.integer(-4, 4));
  return values;
}

// How many elements differ from the expected sums, and where the first one is.
std::string exact_mismatches(const std::vector<float>& got, const std::vector<double>& expected,
                             int columns) {
  int wrong = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i)
    if (double(got[i]) != expected[i] && wrong++ == 0)
      first = " (first at row " + std::to_string(i / columns) + ", column " +
              std::to_string(i % columns) + ": " + std::to_string(got[i]) + " for " +
              std::to_string(expected[i]) + ")";
  return wrong == 0 ? "" : std::to_string(wrong) + " of " + std::to_string(got.size()) +
                               " elements wrong" + first;
}

class AttentionHopperProducts : public ::testing::TestWithParam<int> {  // the head dim
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible: the products need one";
    if (!cuda::warpgroup_kernels_run())
      GTEST_SKIP() << "the warpgroup products need a GPU of compute capability 9.0";
  }
};

template <int kHeadDim>
std::string rows_times_rows_mismatches() {
  constexpr int kRows = flash::kTileRows;
  test::Rng rng(50 + kHeadDim);
  const std::vector<float> left = small_integers(rng, kRows * kHeadDim),
                           right = small_integers(rng, kRows * kHeadDim);
  OwnedTensor product({kRows, kRows}, DType::f32, Device::cuda);
  const OwnedTensor gpu_left = on_gpu({kRows, kHeadDim}, left, DType::bf16),
                    gpu_right = on_gpu({kRows, kHeadDim}, right, DType::bf16);
  CST_LAUNCH(1, flash::kWarpgroupThreads, two_tiles_shared_bytes<kHeadDim>(),
             rows_times_rows_kernel<kHeadDim>)(product->f32(),
                                               static_cast<const flash::bf16*>(gpu_left->data),
                                               static_cast<const flash::bf16*>(gpu_right->data));
  CUDA_CHECK_LAUNCH();
  std::vector<double> expected(kRows * kRows, 0.0);
  for (int row = 0; row < kRows; ++row)
    for (int col = 0; col < kRows; ++col)
      for (int k = 0; k < kHeadDim; ++k)
        expected[row * kRows + col] += double(left[row * kHeadDim + k]) * right[col * kHeadDim + k];
  return exact_mismatches(to_host_f32(product), expected, kRows);
}

template <int kHeadDim>
std::string weights_times_tile_mismatches() {
  constexpr int kRows = flash::kTileRows;
  test::Rng rng(60 + kHeadDim);
  const std::vector<float> initial = small_integers(rng, kRows * kHeadDim),
                           weights = small_integers(rng, kRows * kRows),
                           tile = small_integers(rng, kRows * kHeadDim);
  OwnedTensor result({kRows, kHeadDim}, DType::f32, Device::cuda);
  const OwnedTensor gpu_initial = on_gpu({kRows, kHeadDim}, initial, DType::f32),
                    gpu_weights = on_gpu({kRows, kRows}, weights, DType::f32),
                    gpu_tile = on_gpu({kRows, kHeadDim}, tile, DType::bf16);
  CST_LAUNCH(1, flash::kWarpgroupThreads, two_tiles_shared_bytes<kHeadDim>(),
             weights_times_tile_kernel<kHeadDim>)(result->f32(), gpu_initial->f32(),
                                                  gpu_weights->f32(),
                                                  static_cast<const flash::bf16*>(gpu_tile->data));
  CUDA_CHECK_LAUNCH();
  std::vector<double> expected(initial.begin(), initial.end());
  for (int row = 0; row < kRows; ++row)
    for (int col = 0; col < kHeadDim; ++col)
      for (int j = 0; j < kRows; ++j)
        expected[row * kHeadDim + col] += double(weights[row * kRows + j]) * tile[j * kHeadDim + col];
  return exact_mismatches(to_host_f32(result), expected, kHeadDim);
}

// S = Q K^T (and dP = dO V^T, S^T = K Q^T): kHeadDim / 16 multiplies m64n64k16, both operands
// K-major in shared memory.
TEST_P(AttentionHopperProducts, RowsTimesRowsIsExact) {
  EXPECT_EQ(GetParam() == 64 ? rows_times_rows_mismatches<64>() : rows_times_rows_mismatches<128>(), "");
}

// O += P V (and dQ += dS K, dV += P^T dO, dK += dS^T Q): 4 multiplies m64nDk16, A from
// registers, B MN-major in shared memory.
TEST_P(AttentionHopperProducts, WeightsTimesTileIsExact) {
  EXPECT_EQ(GetParam() == 64 ? weights_times_tile_mismatches<64>() : weights_times_tile_mismatches<128>(), "");
}

INSTANTIATE_TEST_SUITE_P(HeadDims, AttentionHopperProducts, ::testing::Values(64, 128),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "d" + std::to_string(info.param);
                         });

}  // namespace
}  // namespace cst
