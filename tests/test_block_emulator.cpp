// The block emulator's checks of shared memory (tests/emulation/block_emulator.h), driven by the
// flash kernels' own primitives (tests/emulation/attention_primitives_model.h). Warp 0 writes 32
// rows of 16 bytes, by plain stores or by cp.async, and warp 1 reads them with one ldmatrix_x4.
// Without a barrier between the two the emulator must report the race whichever warp runs first
// (both orders are run); with the barrier the read must see what was written.
#include <gtest/gtest.h>

#if defined(__x86_64__)
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/emulation/attention_primitives_model.h"

#include "kernels/attention_warpgroup.cuh"

namespace cst {
namespace {

namespace flash = cuda::flash;
using emulation::block;
using emulation::Schedule;

constexpr int kThreads = 64;  // two warps
constexpr int kRows = 32;     // one 16-byte row per lane of a warp: what one ldmatrix_x4 reads
constexpr size_t kSharedBytes = kRows * 16;

// Word w of row r, as warp 0 writes it: a value that says where it belongs.
uint32_t word_of_row(int row, int word) { return uint32_t(row * 16 + word); }

enum class Writer { plain_stores, copies };

struct Outcome {
  std::string error;
  std::array<uint32_t, 4> fragment{};  // what lane 0 of warp 1 read
};

// Runs one block under `order`: warp 0 writes row `lane` (plain stores, or one cp.async from
// `source` with its commit and wait), then a block barrier if `barrier`, then warp 1 reads the 32
// rows with ldmatrix_x4, lane l giving the address of row l.
Outcome write_then_read(Writer writer, bool barrier, Schedule::Order order) {
  static std::vector<uint32_t> source;  // the rows cp.async copies from
  source.resize(kRows * 4);
  for (int row = 0; row < kRows; ++row)
    for (int word = 0; word < 4; ++word) source[size_t(row * 4 + word)] = word_of_row(row, word);
  const Schedule saved = block().schedule();
  block().set_schedule({order, 0});
  block().set_readable({{source.data(), source.size() * sizeof(uint32_t)}});
  Outcome outcome;
  outcome.error = block().run(kThreads, kSharedBytes, [&](std::byte* shared, int thread) {
    const int lane = thread % 32;
    auto* row = reinterpret_cast<flash::bf16*>(shared + lane * 16);
    if (thread < 32) {
      if (writer == Writer::plain_stores) {
        for (int word = 0; word < 4; ++word)
          flash::store_shared_bf16x2(row + 2 * word, word_of_row(lane, word));
      } else {
        flash::copy_async_16(row, source.data() + lane * 4, true);
        flash::copy_async_commit();
        flash::copy_async_wait<0>();
      }
    }
    if (barrier) flash::block_barrier();
    if (thread >= 32) {
      uint32_t fragment[4];
      flash::ldmatrix_x4(fragment, row);
      if (lane == 0) std::copy(fragment, fragment + 4, outcome.fragment.begin());
    }
  });
  block().set_schedule(saved);
  return outcome;
}

// Register m of lane 0 holds elements (0, 0) and (0, 1) of matrix m, whose row 0 is the row whose
// address lane 8m gave: row 8m, word 0.
constexpr std::array<uint32_t, 4> kLaneZeroFragment = {0 * 16, 8 * 16, 16 * 16, 24 * 16};

TEST(BlockEmulator, WritesAreSeenByAnotherWarpAfterABarrier) {
  for (Writer writer : {Writer::plain_stores, Writer::copies})
    for (auto order : {Schedule::Order::in_order, Schedule::Order::reversed}) {
      const Outcome outcome = write_then_read(writer, true, order);
      EXPECT_EQ(outcome.error, "");
      EXPECT_EQ(outcome.fragment, kLaneZeroFragment);
    }
}

// What the emulator must report when the barrier is left out, with warp 0 running first (the
// read comes after the writes, in the same barrier interval) or warp 1 (the writes land on rows
// it read in that interval).
struct Race {
  Writer writer;
  Schedule::Order order;
  const char* report;
};

TEST(BlockEmulator, WritesReadByAnotherWarpWithoutABarrierAreARace) {
  const Race races[] = {
      {Writer::plain_stores, Schedule::Order::in_order,
       "ldmatrix reads a shared row another warp stored to since the last barrier"},
      {Writer::plain_stores, Schedule::Order::reversed,
       "st.shared overwrites a shared row another warp read since the last barrier"},
      {Writer::copies, Schedule::Order::in_order,
       "ldmatrix reads a shared row whose cp.async landed after the last barrier"},
      {Writer::copies, Schedule::Order::reversed,
       "cp.async overwrites a shared row another warp read since the last barrier"},
  };
  for (const Race& race : races)
    EXPECT_NE(write_then_read(race.writer, false, race.order).error.find(race.report),
              std::string::npos)
        << race.report;
}

TEST(BlockEmulator, PlainStoresOutsideSharedMemoryOrMisalignedAreRefused) {
  auto store_at = [](size_t byte_offset) {
    return block().run(32, kSharedBytes, [&](std::byte* shared, int thread) {
      if (thread == 0)
        flash::store_shared_bf16x2(reinterpret_cast<flash::bf16*>(shared + byte_offset), 1u);
    });
  };
  EXPECT_EQ(store_at(kSharedBytes - 4), "");
  EXPECT_NE(store_at(kSharedBytes).find("st.shared address outside the block's shared memory"),
            std::string::npos);
  EXPECT_NE(store_at(2).find("st.shared address not aligned to its size"), std::string::npos);
}

// A block sum as the RMSNorm kernels do one per row: each warp's lane 0 posts its warp's value
// (after the five shuffles of a warp sum) to one slot per warp, a barrier, then every thread
// reads both slots. With a single pair of slots reused row after row, a warp can post the next row's
// value before a thread of the other warp has read this row's: only the barrier of the next row
// would order them. Counts the threads that read a slot of another row.
int stale_block_sums(Schedule schedule, int rows) {
  const Schedule saved = block().schedule();
  block().set_schedule(schedule);
  std::array<int, 2> slots{};
  int wrong_reads = 0;
  const std::string error = block().run(kThreads, 0, [&](std::byte*, int thread) {
    for (int row = 0; row < rows; ++row) {
      float posted = float(row);
      for (int lane_mask = 16; lane_mask > 0; lane_mask /= 2)
        posted = flash::shuffle_xor(posted, lane_mask);
      if (thread % 32 == 0) slots[size_t(thread / 32)] = int(posted);
      flash::block_barrier();
      wrong_reads += (slots[0] != row) + (slots[1] != row);
    }
  });
  block().set_schedule(saved);
  EXPECT_EQ(error, "");
  return wrong_reads;
}

// The shuffled schedule lets fibers fall behind by several collectives (BlockEmulator::sits_out),
// which the race above needs; in the fixed orders every fiber takes one turn per round, so every
// thread has read the slots before any warp is through its five shuffles.
TEST(BlockEmulator, ShuffledScheduleLetsAThreadFallBehindAcrossABarrier) {
  EXPECT_EQ(stale_block_sums({Schedule::Order::in_order, 0}, 64), 0);
  EXPECT_EQ(stale_block_sums({Schedule::Order::reversed, 0}, 64), 0);
  int shuffled_wrong_reads = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed)
    shuffled_wrong_reads += stale_block_sums({Schedule::Order::shuffled, seed}, 64);
  EXPECT_GT(shuffled_wrong_reads, 0);
}

// Blocks that take turns through a counter (flash::wait_for_turn, pass_turn): run one at a time,
// a block whose turn comes after the counter's value would wait forever on the GPU too (or for a
// block that started after it), and is reported; one whose turn has come goes on and passes it.
TEST(BlockEmulator, ABlockAheadOfItsTurnIsReported) {
  int turn = 0;
  auto take_turn = [&](int value) {
    return block().run(kThreads, 0, [&](std::byte*, int thread) {
      flash::wait_for_turn(&turn, value, thread);
      flash::pass_turn(&turn, thread);
    });
  };
  EXPECT_NE(take_turn(1).find("waits for turn 1 of a counter at 0"), std::string::npos);
  EXPECT_EQ(turn, 0);
  EXPECT_EQ(take_turn(0), "");
  EXPECT_EQ(take_turn(1), "");
  EXPECT_EQ(turn, 2);
}

// A warpgroup multiply (the Hopper forward's S = Q K^T, one k16 step) on two 64 x 64 tiles that
// warp 0 stores with plain stores: small integers, so the f32 sums are exact. Returns the
// emulator's report and, unless it reports, the elements of D that differ from the sums computed
// here. The thread checks its accumulator before the wait too: the multiply lands at the wait.
struct MultiplyOutcome {
  std::string error;
  int wrong_elements = 0;
  int early_elements = 0;  // written before the wait
};

MultiplyOutcome multiply_stored_tiles(bool proxy_fence, bool wait) {
  constexpr int kTileElements = flash::kTileRows * 64;
  auto a = [](int row, int k) { return float((row * 3 + k) % 7 - 3); };
  auto b = [](int col, int k) { return float((col + 2 * k) % 5 - 2); };
  MultiplyOutcome outcome;
  const size_t bytes = 2 * kTileElements * sizeof(uint16_t) + flash::kSwizzleAtomBytes;
  outcome.error = block().run(flash::kWarpgroupThreads, bytes, [&](std::byte* shared, int thread) {
    flash::bf16* a_tile = flash::align_to_swizzle_atom(reinterpret_cast<char*>(shared));
    flash::bf16* b_tile = a_tile + kTileElements;
    if (thread < 32)
      for (int row = 2 * thread; row < 2 * thread + 2; ++row)
        for (int col = 0; col < 64; col += 2) {
          const int at = flash::tile_offset<64, flash::TileLayout::panels>(row, col & ~7) + col % 8;
          flash::store_shared_bf16x2(a_tile + at, flash::pack_bf16x2(a(row, col), a(row, col + 1)));
          flash::store_shared_bf16x2(b_tile + at, flash::pack_bf16x2(b(row, col), b(row, col + 1)));
        }
    if (proxy_fence) flash::async_proxy_fence();
    flash::block_barrier();
    float d[8][4] = {};
    flash::warpgroup_fence();
    flash::warpgroup_multiply_shared(d, flash::k_major_descriptor(a_tile),
                                     flash::k_major_descriptor(b_tile), false);
    flash::warpgroup_commit();
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) outcome.early_elements += d[n][e] != 0.0f;
    if (!wait) return;
    flash::warpgroup_wait<0>();
    const int lane = thread % 32, row0 = thread / 32 * 16;
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) {
        const int row = row0 + flash::fragment_row(lane, e), col = flash::fragment_col(lane, n, e);
        float sum = 0.0f;
        for (int k = 0; k < 16; ++k) sum += a(row, k) * b(col, k);
        outcome.wrong_elements += d[n][e] != sum;
      }
  });
  return outcome;
}

TEST(BlockEmulator, WarpgroupMultiplyReadsFencedTilesAtItsWait) {
  const MultiplyOutcome outcome = multiply_stored_tiles(true, true);
  EXPECT_EQ(outcome.error, "");
  EXPECT_EQ(outcome.wrong_elements, 0);
  EXPECT_EQ(outcome.early_elements, 0);
}

TEST(BlockEmulator, WarpgroupMultiplyOfTilesWrittenWithoutAProxyFenceIsReported) {
  EXPECT_NE(multiply_stored_tiles(false, true).error.find("wrote without a fence.proxy.async"),
            std::string::npos);
}

TEST(BlockEmulator, WarpgroupMultiplyNeverWaitedForIsReported) {
  EXPECT_NE(multiply_stored_tiles(true, false).error.find("asynchronous work never waited for"),
            std::string::npos);
}

}  // namespace
}  // namespace cst

#else  // the fibers switch with x86-64 instructions

TEST(BlockEmulator, NeedsX86) { GTEST_SKIP() << "the block emulator needs an x86-64 CPU"; }

#endif
