// The flash attention tile code (kernels/attention_tiles.cuh) and the row-wise kernels for other
// head dims (kernels/attention_rowwise.cuh) run on the CPU and compared with the CPU reference op
// (kernels/attention.cpp), so the kernels' indexing, masks, online softmax and backward are
// checked on every build, without a GPU or nvcc.
//
// The tiles use nothing of CUDA but the functions of kernels/attention_primitives.cuh, one PTX
// instruction each; tests/emulation/attention_primitives_model.h models each of them from the
// PTX ISA, and tests/emulation/block_emulator.h runs every block of every launch as one fiber per
// CUDA thread and reports what the GPU would leave undefined (see both files). Plain loads and
// stores (the dK/dV block's lse and D rows in shared memory, every global access but cp.async)
// are not tracked; the tensors carry NaN guard bands instead, which show up in the results or in
// the guard check.
#include <gtest/gtest.h>

#if defined(__x86_64__) && __has_include(<sys/mman.h>)
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iomanip>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/tensor.h"
#include "tests/emulation/attention_primitives_model.h"
#include "tests/op_reference.h"

#include "kernels/attention_rowwise.cuh"
#include "kernels/attention_tiles.cuh"
#include "kernels/attention_warpgroup.cuh"

namespace cst {
namespace {

namespace flash = cuda::flash;
using emulation::block;

// ---- emulated launches (the grids of kernels/attention.cu) ----

// Host memory standing in for a device tensor: `size` elements between two guard bands of NaN
// bytes, so a stray read brings NaN into the results and a stray write shows in guards_intact().
// An anonymous mapping, whose pages cost nothing until touched: a tensor of billions of elements
// can stand in for a test that uses a few of its rows.
template <class T>
class EmulatedArray {
 public:
  explicit EmulatedArray(size_t size) : size_(size), bytes_((size + 2 * kGuard) * sizeof(T)) {
    void* mapping = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping == MAP_FAILED) fail("cannot map ", bytes_, " bytes for an emulated tensor");
    base_ = static_cast<T*>(mapping);
    poison_bytes(base_, kGuard);
    poison_bytes(base_ + kGuard + size_, kGuard);
  }
  ~EmulatedArray() { munmap(base_, bytes_); }
  EmulatedArray(const EmulatedArray&) = delete;
  EmulatedArray& operator=(const EmulatedArray&) = delete;

  T* data() { return base_ + kGuard; }
  std::pair<const void*, size_t> range() { return {data(), size_ * sizeof(T)}; }
  // NaN over elements [first, first + count): what the kernels must write, or must not read.
  void poison(size_t first, size_t count) { poison_bytes(data() + first, count); }
  bool guards_intact() const {
    auto intact = [](const T* guard) {
      const auto* bytes = reinterpret_cast<const unsigned char*>(guard);
      return std::all_of(bytes, bytes + kGuard * sizeof(T),
                         [](unsigned char b) { return b == 0xff; });
    };
    return intact(base_) && intact(base_ + kGuard + size_);
  }

 private:
  static constexpr size_t kGuard = 64;
  static void poison_bytes(T* first, size_t count) { std::memset(first, 0xff, count * sizeof(T)); }
  T* base_ = nullptr;
  size_t size_, bytes_;
};

struct EmulatedTensors {
  EmulatedArray<flash::bf16> q, k, v, dout, out, dq, dk, dv;
  EmulatedArray<float> lse, dout_dot_out, dq_accumulator;
  EmulatedTensors(size_t q_size, size_t kv_size, size_t lse_size)
      : q(q_size), k(kv_size), v(kv_size), dout(q_size), out(q_size), dq(q_size), dk(kv_size),
        dv(kv_size), lse(lse_size), dout_dot_out(lse_size), dq_accumulator(q_size) {}
};

// Runs one block of `threads` per (tile, head, sequence) for sequences [first_sequence,
// sequences), like launch_tiles in kernels/attention.cu (blocks are independent, so leaving out
// the blocks of other sequences changes nothing for these). Returns "" or the first problem and
// its block.
std::string launch_tiles(
    int tiles, int heads, int first_sequence, int sequences, int shared_bytes,
    const std::function<void(char*, flash::TileCoordinates, int)>& block_body,
    int threads = flash::kThreads) {
  for (int sequence = first_sequence; sequence < sequences; ++sequence)
    for (int head = 0; head < heads; ++head)
      for (int tile = 0; tile < tiles; ++tile) {
        flash::TileCoordinates at{tile, head, sequence};
        std::string error =
            block().run(threads, size_t(shared_bytes), [&](std::byte* shared, int thread) {
              block_body(reinterpret_cast<char*>(shared), at, thread);
            });
        if (!error.empty())
          return "block (tile " + std::to_string(tile) + ", head " + std::to_string(head) +
                 ", sequence " + std::to_string(sequence) + "): " + error;
      }
  return "";
}

// One warp per row in blocks of 256 threads (the D kernel of kernels/attention.cu and every
// row-wise kernel), for the blocks that hold rows [first_row, rows).
std::string launch_rows(const char* kernel, int64_t first_row, int64_t rows,
                        const std::function<void(int64_t row, int lane)>& warp_body) {
  constexpr int kThreads = 256, kWarpsPerBlock = kThreads / emulation::kWarpSize;
  for (int64_t block_row = first_row / kWarpsPerBlock * kWarpsPerBlock; block_row < rows;
       block_row += kWarpsPerBlock) {
    std::string error = block().run(kThreads, 0, [&](std::byte*, int thread) {
      warp_body(block_row + thread / emulation::kWarpSize, thread % emulation::kWarpSize);
    });
    if (!error.empty())
      return std::string(kernel) + " block at row " + std::to_string(block_row) + ": " + error;
  }
  return "";
}

// D = rowsum(dO * O): one warp per (token, head), for rows [first_row, tokens * heads).
template <int kHeadDim>
std::string launch_dout_dot_out(const flash::AttentionParams& params, int64_t first_row) {
  return launch_rows("dout . out", first_row, int64_t(params.tokens) * params.heads,
                     [&](int64_t row, int lane) { flash::dout_dot_out_warp<kHeadDim>(params, row, lane); });
}

// The row-wise kernels (kernels/attention_rowwise.cu) in their launch order, for the tokens from
// first_token on.
std::string run_rowwise_kernels(const flash::AttentionParams& p, int sequences, int head_dim,
                                int64_t first_token) {
  namespace rowwise = cuda::rowwise;
  const int64_t query_rows = int64_t(p.tokens) * p.heads, key_rows = int64_t(p.tokens) * p.kv_heads;
  std::string error = launch_rows("row-wise forward", first_token * p.heads, query_rows, [&](int64_t row, int lane) {
    rowwise::forward_warp(p, sequences, head_dim, row, lane);
  });
  if (error.empty())
    error = launch_rows("row-wise dout . out", first_token * p.heads, query_rows,
                        [&](int64_t row, int lane) { rowwise::dout_dot_out_warp(p, head_dim, row, lane); });
  if (error.empty())
    error = launch_rows("row-wise dq", first_token * p.heads, query_rows,
                        [&](int64_t row, int lane) { rowwise::dq_warp(p, sequences, head_dim, row, lane); });
  if (error.empty())
    error = launch_rows("row-wise dk/dv", first_token * p.kv_heads, key_rows,
                        [&](int64_t row, int lane) { rowwise::dkdv_warp(p, sequences, head_dim, row, lane); });
  return error;
}

// The forward kernel with query tiles of kRowBlocks x 64 rows and softmax steps of kScoreColumns
// keys, for the sequences from first_sequence on; the longest has `longest` tokens.
template <int kHeadDim, int kRowBlocks, int kScoreColumns = flash::kTileRows>
std::string run_forward(const flash::AttentionParams& p, int longest, int first_sequence,
                        int sequences) {
  constexpr int kQueryRows = kRowBlocks * flash::kTileRows;
  return launch_tiles((longest + kQueryRows - 1) / kQueryRows, p.heads, first_sequence, sequences,
                      flash::forward_shared_bytes<kHeadDim, kRowBlocks>(),
                      [&](char* shared, flash::TileCoordinates at, int thread) {
                        flash::forward_block<kHeadDim, kRowBlocks, kScoreColumns>(p, shared, at,
                                                                                  thread);
                      });
}

// The Hopper kernels of 128-query tiles on two warpgroups (the forward, the dQ pass), for the
// sequences from first_sequence on.
template <class BlockFunction>
std::string run_warpgroup_query_tiles(const flash::AttentionParams& p, int longest,
                                      int first_sequence, int sequences, int shared_bytes,
                                      BlockFunction block_function) {
  constexpr int kQueryRows = flash::kQueryTileWarpgroups * flash::kTileRows;
  return launch_tiles(
      (longest + kQueryRows - 1) / kQueryRows, p.heads, first_sequence, sequences, shared_bytes,
      [&](char* shared, flash::TileCoordinates at, int thread) {
        block_function(p, shared, at, thread);
      },
      flash::kQueryTileThreads);
}

template <int kHeadDim>
std::string run_forward_warpgroups(const flash::AttentionParams& p, int longest,
                                   int first_sequence, int sequences) {
  return run_warpgroup_query_tiles(p, longest, first_sequence, sequences,
                                   flash::forward_warpgroups_shared_bytes<kHeadDim>(),
                                   flash::forward_warpgroups_block<kHeadDim>);
}

// lse and D come from the kernels run before it.
template <int kHeadDim>
std::string run_dq_warpgroups(const flash::AttentionParams& p, int longest, int first_sequence,
                              int sequences) {
  return run_warpgroup_query_tiles(p, longest, first_sequence, sequences,
                                   flash::backward_dq_warpgroups_shared_bytes<kHeadDim>(),
                                   flash::backward_dq_warpgroups_block<kHeadDim>);
}

// The Hopper dK/dV pass (64-key tiles on one warpgroup), for the sequences from first_sequence
// on; lse and D come from the kernels run before it.
template <int kHeadDim>
std::string run_dkdv_warpgroup(const flash::AttentionParams& p, int longest, int first_sequence,
                               int sequences) {
  return launch_tiles((longest + flash::kTileRows - 1) / flash::kTileRows, p.kv_heads,
                      first_sequence, sequences,
                      flash::backward_dkdv_warpgroup_shared_bytes<kHeadDim>(),
                      [&](char* shared, flash::TileCoordinates at, int thread) {
                        flash::backward_dkdv_warpgroup_block<kHeadDim>(p, shared, at, thread);
                      });
}

// The forward (64-query tiles) and the three backward kernels, in the order kernels/attention.cu
// launches them, for the sequences from first_sequence on, whose first token is first_token.
template <int kHeadDim>
std::string run_kernels(const flash::AttentionParams& p, int longest, int first_sequence,
                        int sequences, int64_t first_token) {
  const int tiles = (longest + flash::kTileRows - 1) / flash::kTileRows;
  auto for_blocks = [&](int heads, int shared_bytes, auto block_function) {
    return launch_tiles(tiles, heads, first_sequence, sequences, shared_bytes,
                        [&](char* shared, flash::TileCoordinates at, int thread) {
                          block_function(p, shared, at, thread);
                        });
  };
  std::string error = run_forward<kHeadDim, 1>(p, longest, first_sequence, sequences);
  if (error.empty()) error = launch_dout_dot_out<kHeadDim>(p, first_token * p.heads);
  if (error.empty())
    error = for_blocks(p.kv_heads, flash::dkdv_shared_bytes<kHeadDim, flash::DqShare::none>(),
                       flash::backward_dkdv_block<kHeadDim, flash::DqShare::none>);
  if (error.empty())
    error = for_blocks(p.heads, flash::dq_shared_bytes<kHeadDim>(),
                       flash::backward_dq_block<kHeadDim>);
  return error;
}

// The backward with dQ added by the dK/dV blocks, as kernels/attention.cu runs it
// (AttentionBackward::ordered_dq or atomic_dq): D, the dK/dV blocks that also add dQ to the
// accumulator (in key order, with the turn counters zeroed; or by atomics, with the accumulator
// zeroed: the caller sees to both), then, for the atomics only, dq from the accumulator; for the
// tokens from first_token on. The blocks run in the order of launch_tiles, key tiles ascending,
// which is the order the tickets give them on the GPU (the emulated CUDA test runs the tickets
// themselves, under every block order).
template <int kHeadDim, flash::DqShare kDqShare>
std::string run_backward_with_dq_share(const flash::AttentionParams& p, int longest,
                                       int first_sequence, int sequences, int64_t first_token) {
  const int tiles = (longest + flash::kTileRows - 1) / flash::kTileRows;
  std::string error = launch_dout_dot_out<kHeadDim>(p, first_token * p.heads);
  if (error.empty())
    error = launch_tiles(tiles, p.kv_heads, first_sequence, sequences,
                         flash::dkdv_shared_bytes<kHeadDim, kDqShare>(),
                         [&](char* shared, flash::TileCoordinates at, int thread) {
                           flash::backward_dkdv_block<kHeadDim, kDqShare>(p, shared, at, thread);
                         });
  if (error.empty() && kDqShare == flash::DqShare::atomic)
    for (int64_t i = first_token * p.heads * kHeadDim; i < int64_t(p.tokens) * p.heads * kHeadDim;
         i += flash::kDqElementsPerThread)
      flash::dq_from_accumulator(p, i);
  return error;
}

template <flash::DqShare kDqShare>
std::string run_backward_with_dq_share(int head_dim, const flash::AttentionParams& p, int longest,
                                       int first_sequence, int sequences, int64_t first_token) {
  return head_dim == 64 ? run_backward_with_dq_share<64, kDqShare>(p, longest, first_sequence,
                                                                   sequences, first_token)
                        : run_backward_with_dq_share<128, kDqShare>(p, longest, first_sequence,
                                                                    sequences, first_token);
}

// ---- the comparison with the CPU reference ----

struct EmulatedCase {
  const char* name;
  std::vector<int32_t> lengths;  // the packed sequences that are run and checked
  AttentionShape shape;
  // Tokens of one sequence packed ahead of them, never run nor checked (its pages are never
  // touched): it pushes the checked rows past 2^31 elements, where 32-bit offsets would wrap.
  int32_t skipped_tokens = 0;
};

void PrintTo(const EmulatedCase& c, std::ostream* out) { *out << c.name; }

// Tolerances on ||emulated - cpu|| / ||cpu||. out, dq, dk and dv are stored in bf16 (~1.6e-3 RMS
// alone) and P, dS are rounded to bf16 before their matmuls; they measure 1.6e-3 to 2.5e-3 on
// these cases. 5e-3 leaves a 2x margin and still catches a wrong index, mask or missing term
// (errors of 1e-1 and more; a 1% error in the scale of half the dq rows gives 7e-3). lse is f32
// from exact bf16 products (measured below 1e-7): 1e-5.
constexpr double kOutputTolerance = 5e-3;
constexpr double kLseTolerance = 1e-5;

// Rows [first_row, first_row + rows) of a (tokens, width) array.
struct RowRange {
  int64_t first_row, rows, width;
  size_t first() const { return size_t(first_row * width); }
  size_t count() const { return size_t(rows * width); }
};

// Random values representable in bf16, written to the rows of the kernel's array and returned
// as floats.
std::vector<float> fill_bf16(EmulatedArray<flash::bf16>& array, RowRange range, test::Rng& rng,
                             double magnitude) {
  std::vector<float> values = rng.floats(int64_t(range.count()), -magnitude, magnitude);
  for (size_t i = 0; i < values.size(); ++i) {
    array.data()[range.first() + i].bits = f32_to_bf16(values[i]);
    values[i] = bf16_to_f32(array.data()[range.first() + i].bits);
  }
  return values;
}

std::vector<float> read_rows(EmulatedArray<flash::bf16>& array, RowRange range) {
  std::vector<float> values(range.count());
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(array.data()[range.first() + i]);
  return values;
}

// lse is (H, N): the checked tokens of every head.
std::vector<float> read_lse(EmulatedArray<float>& lse, int64_t heads, int64_t tokens,
                            int64_t first_token) {
  std::vector<float> values;
  for (int64_t h = 0; h < heads; ++h)
    values.insert(values.end(), lse.data() + h * tokens + first_token,
                  lse.data() + (h + 1) * tokens);
  return values;
}

OwnedTensor cpu_tensor(const std::vector<int64_t>& shape, const std::vector<float>& values = {}) {
  OwnedTensor t(shape, DType::f32, Device::cpu);
  if (!values.empty()) std::copy(values.begin(), values.end(), t->f32());
  return t;
}

double error_against(const std::vector<float>& emulated, const Tensor& reference) {
  return test::relative_error(emulated, test::to_double(test::to_vector(reference)));
}

class AttentionEmulated : public ::testing::TestWithParam<EmulatedCase> {};

TEST_P(AttentionEmulated, MatchesCpuReference) {
  const EmulatedCase& c = GetParam();
  const AttentionShape& shape = c.shape;
  const int64_t heads = shape.heads, kv_heads = shape.kv_heads, dim = shape.head_dim;
  // The batch the kernels see: the skipped sequence (if any), then the checked ones.
  std::vector<int32_t> cu_seqlens = {0};
  if (c.skipped_tokens > 0) cu_seqlens.push_back(c.skipped_tokens);
  for (int32_t length : c.lengths) cu_seqlens.push_back(cu_seqlens.back() + length);
  const int64_t tokens = cu_seqlens.back(), first_token = c.skipped_tokens;
  const int64_t checked_tokens = tokens - first_token;
  const RowRange q_rows{first_token, checked_tokens, heads * dim};
  const RowRange kv_rows{first_token, checked_tokens, kv_heads * dim};

  std::unique_ptr<EmulatedTensors> gpu;
  try {
    gpu = std::make_unique<EmulatedTensors>(size_t(tokens * heads * dim),
                                            size_t(tokens * kv_heads * dim),
                                            size_t(heads * tokens));
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();  // an address space too small for the sparse tensors
  }
  test::Rng rng(2000 + checked_tokens * 7 + heads);
  // |q|, |k| up to 2 spread the scores over several units: neither a flat nor a one-hot softmax.
  const std::vector<float> q = fill_bf16(gpu->q, q_rows, rng, 2.0),
                           k = fill_bf16(gpu->k, kv_rows, rng, 2.0),
                           v = fill_bf16(gpu->v, kv_rows, rng, 1.0),
                           dout = fill_bf16(gpu->dout, q_rows, rng, 1.0);
  // Every output the checked sequences own starts as NaN, so one left unwritten fails the test.
  auto poison_forward_outputs = [&] {
    gpu->out.poison(q_rows.first(), q_rows.count());
    for (int64_t h = 0; h < heads; ++h)
      gpu->lse.poison(size_t(h * tokens + first_token), size_t(checked_tokens));
  };
  poison_forward_outputs();
  gpu->dq.poison(q_rows.first(), q_rows.count());
  for (auto* output : {&gpu->dk, &gpu->dv}) output->poison(kv_rows.first(), kv_rows.count());
  for (int64_t h = 0; h < heads; ++h)
    gpu->dout_dot_out.poison(size_t(h * tokens + first_token), size_t(checked_tokens));

  flash::AttentionParams params;
  params.q = gpu->q.data();
  params.k = gpu->k.data();
  params.v = gpu->v.data();
  params.out = gpu->out.data();
  params.lse = gpu->lse.data();
  params.dout = gpu->dout.data();
  params.dout_dot_out = gpu->dout_dot_out.data();
  params.dq = gpu->dq.data();
  params.dq_accumulator = gpu->dq_accumulator.data();
  params.dk = gpu->dk.data();
  params.dv = gpu->dv.data();
  params.cu_seqlens = cu_seqlens.data();
  params.tokens = int(tokens);
  params.heads = shape.heads;
  params.kv_heads = shape.kv_heads;
  params.window = shape.window;
  params.scale = 1.0f / std::sqrt(float(dim));
  block().set_readable({gpu->q.range(), gpu->k.range(), gpu->v.range(), gpu->dout.range()});

  const int first_sequence = c.skipped_tokens > 0 ? 1 : 0;
  const int sequences = int(cu_seqlens.size()) - 1;
  const int longest = *std::max_element(c.lengths.begin(), c.lengths.end());
  ASSERT_EQ(dim == 64    ? run_kernels<64>(params, longest, first_sequence, sequences, first_token)
            : dim == 128 ? run_kernels<128>(params, longest, first_sequence, sequences, first_token)
                         : run_rowwise_kernels(params, sequences, int(dim), first_token),
            "");

  // The reference: the checked sequences alone, on the CPU.
  const std::vector<int32_t> reference_offsets = [&] {
    std::vector<int32_t> offsets = {0};
    for (int32_t length : c.lengths) offsets.push_back(offsets.back() + length);
    return offsets;
  }();
  const std::vector<int64_t> q_shape = {checked_tokens, heads, dim},
                             kv_shape = {checked_tokens, kv_heads, dim},
                             lse_shape = {heads, checked_tokens};
  OwnedTensor cpu_q = cpu_tensor(q_shape, q), cpu_k = cpu_tensor(kv_shape, k),
              cpu_v = cpu_tensor(kv_shape, v), cpu_dout = cpu_tensor(q_shape, dout);
  OwnedTensor cpu_out = cpu_tensor(q_shape), cpu_lse = cpu_tensor(lse_shape);
  OwnedTensor cpu_dq = cpu_tensor(q_shape), cpu_dk = cpu_tensor(kv_shape),
              cpu_dv = cpu_tensor(kv_shape);
  attention_forward(cpu_out, cpu_lse, cpu_q, cpu_k, cpu_v, reference_offsets, shape);
  const std::vector<float> gpu_out = read_rows(gpu->out, q_rows);
  const std::vector<float> gpu_lse = read_lse(gpu->lse, heads, tokens, first_token);
  const double out_error = error_against(gpu_out, cpu_out);
  const double lse_error = error_against(gpu_lse, cpu_lse);
  // The backward reference starts from the kernel's own forward results (out in bf16), as the
  // kernel's backward does: D = dO . O cancels against dP where a query sees few keys, and the
  // bf16 rounding of out would otherwise dominate the comparison there.
  attention_backward(cpu_dq, cpu_dk, cpu_dv, cpu_dout, cpu_q, cpu_k, cpu_v,
                     cpu_tensor(q_shape, gpu_out), cpu_tensor(lse_shape, gpu_lse),
                     reference_offsets, shape);
  const double dq_error = error_against(read_rows(gpu->dq, q_rows), cpu_dq);
  const double dk_error = error_against(read_rows(gpu->dk, kv_rows), cpu_dk);
  const double dv_error = error_against(read_rows(gpu->dv, kv_rows), cpu_dv);
  EXPECT_LT(out_error, kOutputTolerance) << "out";
  EXPECT_LT(lse_error, kLseTolerance) << "lse";
  EXPECT_LT(dq_error, kOutputTolerance) << "dq";
  EXPECT_LT(dk_error, kOutputTolerance) << "dk";
  EXPECT_LT(dv_error, kOutputTolerance) << "dv";
  std::ostringstream errors;
  errors << std::scientific << std::setprecision(2) << "out " << out_error << " lse " << lse_error
         << " dq " << dq_error << " dk " << dk_error << " dv " << dv_error;
  RecordProperty("relative_errors", errors.str());

  // The forward with 128-query tiles (32 rows per warp) gives the same bits (kernels/attention.h).
  if (dim == 64 || dim == 128) {
    poison_forward_outputs();
    const std::string error =
        dim == 64 ? run_forward<64, 2>(params, longest, first_sequence, sequences)
                  : run_forward<128, 2>(params, longest, first_sequence, sequences);
    ASSERT_EQ(error, "");
    EXPECT_EQ(read_rows(gpu->out, q_rows), gpu_out) << "out of the 128-query tiles";
    EXPECT_EQ(read_lse(gpu->lse, heads, tokens, first_token), gpu_lse) << "lse of the 128-query tiles";
  }

  // The backward with dQ added by the dK/dV blocks (kernels/attention.h), in key order and by
  // atomics: dq within the same tolerance (its f32 sums are grouped by key tile, and the scale
  // is applied after the sum rather than before the rounding to bf16), dk and dv the same bits.
  if (dim == 64 || dim == 128) {
    const std::vector<float> default_dk = read_rows(gpu->dk, kv_rows),
                             default_dv = read_rows(gpu->dv, kv_rows);
    params.dq_turns_per_head = tokens / flash::kTileRows + sequences;
    std::vector<int> turns(size_t(heads * params.dq_turns_per_head) + 1);
    params.dq_turns = turns.data();
    for (flash::DqShare share : {flash::DqShare::ordered, flash::DqShare::atomic}) {
      const bool ordered = share == flash::DqShare::ordered;
      gpu->dq.poison(q_rows.first(), q_rows.count());
      for (auto* output : {&gpu->dk, &gpu->dv}) output->poison(kv_rows.first(), kv_rows.count());
      if (ordered) {
        std::fill(turns.begin(), turns.end(), 0);
        // The first share of each query tile is stored, never added to: NaN here must not show.
        gpu->dq_accumulator.poison(q_rows.first(), q_rows.count());
      } else {
        std::fill_n(gpu->dq_accumulator.data() + q_rows.first(), q_rows.count(), 0.0f);
      }
      ASSERT_EQ(ordered ? run_backward_with_dq_share<flash::DqShare::ordered>(
                              int(dim), params, longest, first_sequence, sequences, first_token)
                        : run_backward_with_dq_share<flash::DqShare::atomic>(
                              int(dim), params, longest, first_sequence, sequences, first_token),
                "");
      const char* name = ordered ? "ordered" : "atomic";
      const double share_dq_error = error_against(read_rows(gpu->dq, q_rows), cpu_dq);
      EXPECT_LT(share_dq_error, kOutputTolerance) << name << " dq";
      EXPECT_EQ(read_rows(gpu->dk, kv_rows), default_dk) << "dk beside the " << name << " dq";
      EXPECT_EQ(read_rows(gpu->dv, kv_rows), default_dv) << "dv beside the " << name << " dq";
      errors << " " << name << " dq " << share_dq_error;
    }
    RecordProperty("relative_errors", errors.str());
  }

  // The Hopper passes, from the same lse and D (the 128-query forward's out and lse are the
  // default's bits): dq, dk and dv within the same tolerance.
  if (dim == 64 || dim == 128) {
    gpu->dq.poison(q_rows.first(), q_rows.count());
    for (auto* output : {&gpu->dk, &gpu->dv}) output->poison(kv_rows.first(), kv_rows.count());
    const std::string error =
        dim == 64 ? run_dq_warpgroups<64>(params, longest, first_sequence, sequences) +
                        run_dkdv_warpgroup<64>(params, longest, first_sequence, sequences)
                  : run_dq_warpgroups<128>(params, longest, first_sequence, sequences) +
                        run_dkdv_warpgroup<128>(params, longest, first_sequence, sequences);
    ASSERT_EQ(error, "");
    const double warpgroups_dq_error = error_against(read_rows(gpu->dq, q_rows), cpu_dq);
    const double warpgroup_dk_error = error_against(read_rows(gpu->dk, kv_rows), cpu_dk);
    const double warpgroup_dv_error = error_against(read_rows(gpu->dv, kv_rows), cpu_dv);
    EXPECT_LT(warpgroups_dq_error, kOutputTolerance) << "dq of the warpgroup dQ pass";
    EXPECT_LT(warpgroup_dk_error, kOutputTolerance) << "dk of the warpgroup dK/dV pass";
    EXPECT_LT(warpgroup_dv_error, kOutputTolerance) << "dv of the warpgroup dK/dV pass";
    errors << " warpgroups dq " << warpgroups_dq_error << " dk " << warpgroup_dk_error << " dv "
           << warpgroup_dv_error;
    RecordProperty("relative_errors", errors.str());
  }

  // The 128-query tiles with the softmax in 32-key steps: other roundings, the same tolerances.
  // Last, as its out and lse are not the bits the backward checks above started from.
  if (dim == 64 || dim == 128) {
    poison_forward_outputs();
    const std::string error =
        dim == 64 ? run_forward<64, 2, 32>(params, longest, first_sequence, sequences)
                  : run_forward<128, 2, 32>(params, longest, first_sequence, sequences);
    ASSERT_EQ(error, "");
    EXPECT_LT(error_against(read_rows(gpu->out, q_rows), cpu_out), kOutputTolerance)
        << "out of the 128-query tiles in 32-key steps";
    EXPECT_LT(error_against(read_lse(gpu->lse, heads, tokens, first_token), cpu_lse), kLseTolerance)
        << "lse of the 128-query tiles in 32-key steps";
  }

  // The Hopper forward's warpgroup multiplies, modelled from the PTX ISA: the same tolerances.
  if (dim == 64 || dim == 128) {
    poison_forward_outputs();
    const std::string error =
        dim == 64 ? run_forward_warpgroups<64>(params, longest, first_sequence, sequences)
                  : run_forward_warpgroups<128>(params, longest, first_sequence, sequences);
    ASSERT_EQ(error, "");
    const double warpgroups_out_error = error_against(read_rows(gpu->out, q_rows), cpu_out);
    EXPECT_LT(warpgroups_out_error, kOutputTolerance) << "out of the warpgroup forward";
    EXPECT_LT(error_against(read_lse(gpu->lse, heads, tokens, first_token), cpu_lse), kLseTolerance)
        << "lse of the warpgroup forward";
    errors << " warpgroups out " << warpgroups_out_error;
    RecordProperty("relative_errors", errors.str());
  }

  EXPECT_TRUE(gpu->out.guards_intact() && gpu->lse.guards_intact() && gpu->dq.guards_intact() &&
              gpu->dk.guards_intact() && gpu->dv.guards_intact() &&
              gpu->dout_dot_out.guards_intact() && gpu->dq_accumulator.guards_intact())
      << "a kernel wrote outside its output";
}

// Lengths 1, odd, exact tiles (64) and tails (65, 70, 130); empty sequences; windows below, at
// and above the 64-row tile; GQA group sizes 1, 2, 4 and 8; head dims 64 and 128 (the flash
// kernels) and 12 to 256 (the row-wise ones); rows past 2^31 elements. A length-1 sequence alone has dq = dk = 0 exactly (no relative error to measure),
// so it is packed with others.
INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionEmulated,
    ::testing::Values(
        EmulatedCase{"causal_mha_d64", {1, 17, 64, 130}, {2, 2, 64, 0}},
        EmulatedCase{"causal_gqa4_d128", {130, 1, 63}, {4, 1, 128, 0}},
        EmulatedCase{"window48_gqa4_d128", {129, 5, 1}, {4, 1, 128, 48}},
        EmulatedCase{"window64_mha_d64", {0, 150, 0, 3}, {2, 2, 64, 64}},
        EmulatedCase{"window100_gqa4_d64", {3, 190, 65}, {4, 1, 64, 100}},
        EmulatedCase{"window2_mha_d128", {70, 1, 2}, {2, 2, 128, 2}},
        // (2.2M + 101) tokens x 8 heads x 128 = 2.25e9 elements of q: 4.5 GB never touched.
        EmulatedCase{"past_2g_elements_gqa4_d128", {64, 37}, {8, 2, 128, 0}, 2200000},
        // Other head dims: the row-wise kernels (the test and demo models' 12, 16 and 24, one
        // that is not a multiple of 32, the largest).
        EmulatedCase{"rowwise_causal_gqa2_d12", {1, 17, 70, 5}, {4, 2, 12, 0}},
        EmulatedCase{"rowwise_window8_gqa4_d16", {0, 40, 3}, {8, 2, 16, 8}},
        EmulatedCase{"rowwise_causal_mha_d24", {33, 1, 64}, {3, 3, 24, 0}},
        EmulatedCase{"rowwise_window2_gqa8_d100", {45, 1, 2}, {8, 1, 100, 2}},
        EmulatedCase{"rowwise_causal_gqa2_d256", {20, 9}, {2, 1, 256, 0}},
        EmulatedCase{"rowwise_past_2g_elements_gqa4_d24", {40, 7}, {8, 2, 24, 0}, 12000000}),
    [](const ::testing::TestParamInfo<EmulatedCase>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace cst

#else  // the fibers switch with x86-64 instructions, the tensors need mmap

TEST(AttentionEmulated, NeedsX86AndPosix) {
  GTEST_SKIP() << "the emulated flash attention test needs an x86-64 CPU and <sys/mman.h>";
}

#endif
