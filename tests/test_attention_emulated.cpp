// The flash attention tile code (kernels/attention_tiles.cuh) and the row-wise kernels for other
// head dims (kernels/attention_rowwise.cuh) run on the CPU and compared with the CPU reference op
// (kernels/attention.cpp), so the kernels' indexing, masks, online softmax and backward are
// checked on every build, without a GPU or nvcc.
//
// The tiles use nothing of CUDA but the functions of kernels/attention_primitives.cuh, one PTX
// instruction each. This file models each of them from the PTX ISA (NVIDIA, "Parallel Thread
// Execution ISA"), defines the models before including the tiles (the primitives' include guard
// keeps the CUDA versions out), and runs every block of every launch as 128 fibers, one per CUDA
// thread, switched cooperatively on one core. The section each model follows:
//
//   ldmatrix_x4[_transposed]  "ldmatrix", .m8n8.x4{.trans}.shared.b16: lanes 8m..8m+7 give the
//       16-byte-aligned row addresses of matrix m; lane l receives in register m the elements
//       (row l/4, cols 2(l%4), 2(l%4)+1) of matrix m, the first in the low half; with .trans the
//       elements (rows 2(l%4), 2(l%4)+1; col l/4).
//   mma_bf16_16x8x16  "Matrix Fragments for mma.m16n8k16 with floating point type" (.bf16 A, B;
//       .f32 C, D), with group = l/4 and t = l%4:
//         A a_i (register i/2, low half for even i): row group for i in {0,1,4,5}, else group+8;
//           col 2t + (i&1), +8 for i >= 4
//         B b_i (register i/2): row 2t + (i&1), +8 for i >= 2; col group
//         C c_i: row group for i < 2, else group+8; col 2t + (i&1)
//       Products of two bf16 are exact in f32; the model adds them to C in k order in f32 (the
//       tensor cores' internal order and rounding differ by a few f32 ulps).
//   copy_async_16, copy_async_commit, copy_async_wait  "cp.async" (.cg, cp-size 16, src-size 16
//       or 0; bytes past src-size are zero-filled), "cp.async.commit_group" and
//       "cp.async.wait_group" (returns once at most N of the thread's committed groups are
//       pending; copies not yet committed are not waited for).
//   block_barrier  "bar.sync" (__syncthreads): every thread of the block.
//   shuffle_xor  "shfl.sync" .bfly with a full member mask: lane l gets the value of lane l ^ mask.
//   pack_bf16x2  "cvt" .rn.bf16x2.f32: round to nearest even; __floats2bfloat162_rn puts its
//       first argument in the low half.
//   store_bf16x2  a 32-bit global store; store_bf16  "cvt" .rn.bf16.f32 and a 16-bit global store;
//       fast_exp2  exp2f (the device's ex2.approx is within 2 ulp of it, far inside the
//       tolerances below).
//
// A copy is modelled as landing in shared memory when its thread waits for its group, the
// latest moment the ISA allows, so a kernel that reads a tile before waiting sees stale data.
// Beyond the numbers, the models report what the GPU would leave undefined or racy, tracked per
// 16-byte row of shared memory and per barrier interval:
//   - the lanes of a warp running different collectives (.sync.aligned), a thread missing a
//     barrier or a collective (the block deadlocks; reported, not hung);
//   - shared addresses outside the block's dynamic shared memory or not 16-byte aligned,
//     cp.async sources outside the input tensors;
//   - ldmatrix of a row whose copy is still in flight, or landed after the last barrier;
//     cp.async into a row another warp read since the last barrier, or that a copy is still
//     filling; a thread ending with copies nobody waited for.
// Plain loads and stores (the dK/dV block's lse and D rows in shared memory, every global
// access but cp.async) are not tracked; the tensors carry NaN guard bands instead, which show up
// in the results or in the guard check. The fibers take turns only at collectives and barriers,
// so timing-dependent races between them cannot be provoked here: compute-sanitizer racecheck
// and memcheck over the CUDA tests (tools/gpu_check.sh) cover those on the GPU.
#include <gtest/gtest.h>

#if __has_include(<ucontext.h>) && __has_include(<sys/mman.h>)
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <iomanip>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/tensor.h"
#include "tests/op_reference.h"

// ---- the models of kernels/attention_primitives.cuh ----

#define CST_ATTENTION_PRIMITIVES_CUH  // the CUDA versions stay out
#define CST_FLASH_DEVICE inline

namespace cst::emulation {

constexpr int kWarpSize = 32;
constexpr int kChunkBytes = 16;  // one ldmatrix row, one cp.async

// Fibers that wait here until `expected` of them have arrived.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t releases = 0;
};

enum class Collective { ldmatrix, ldmatrix_transposed, mma, shuffle };

// What the lanes of a warp hand each other in a collective. Two slots alternate, so one barrier
// per collective is enough: a lane writes slot c % 2 at its c-th collective and reaches slot
// c % 2 again only after every lane has passed collective c + 1, i.e. finished reading slot c % 2.
struct WarpExchange {
  struct Slot {
    Collective collective[kWarpSize];
    const void* address[kWarpSize];
    uint32_t a[kWarpSize][4];
    uint32_t b[kWarpSize][2];
    float value[kWarpSize];
  } slots[2];
  Barrier barrier;
};

struct PendingCopy {
  std::byte* destination;
  std::array<std::byte, kChunkBytes> bytes;
};

// Who touched a 16-byte row of shared memory, and in which barrier interval (epoch).
struct ChunkHistory {
  int copies_in_flight = 0;
  int64_t landed_epoch = -1;
  int64_t read_epoch = -1;
  int reader_warp = -1;  // kSeveralWarps when more than one warp read it in read_epoch
};
constexpr int kSeveralWarps = -2;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  bool finished = false;
  const char* waiting_in = "";  // the collective or barrier it last waited at, for deadlocks
  uint64_t collectives = 0;     // selects the exchange slot
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> committed;
};

// One block at a time: its fibers, shared memory and the bookkeeping of the checks.
class BlockEmulator {
 public:
  static BlockEmulator& instance() {
    static BlockEmulator emulator;
    return emulator;
  }

  // Address ranges cp.async may read from (the input tensors).
  void set_readable(std::vector<std::pair<const void*, size_t>> ranges) {
    readable_ = std::move(ranges);
  }

  // Runs body(thread) for threads 0..threads-1 of one block with `shared_bytes` of dynamic
  // shared memory (filled with NaN bytes). Returns "" or the first problem found.
  std::string run(int threads, size_t shared_bytes, std::function<void(std::byte*, int)> body) {
    reset(threads, shared_bytes);
    body_ = std::move(body);
    int live = threads;
    while (live > 0 && error_.empty()) {
      uint64_t progress_before = progress_;
      for (int t = 0; t < threads && error_.empty(); ++t) {
        if (fibers_[t].finished) continue;
        current_ = t;
        swapcontext(&scheduler_, &fibers_[t].context);
        if (fibers_[t].finished) --live;
      }
      if (live > 0 && error_.empty() && progress_ == progress_before) error_ = deadlock_report();
    }
    if (error_.empty()) check_copies_waited();
    return error_;
  }

  // ---- used by the models, from inside a fiber ----

  int thread() const { return current_; }
  int lane() const { return current_ % kWarpSize; }
  int warp_index() const { return current_ / kWarpSize; }
  Fiber& fiber() { return fibers_[current_]; }

  [[noreturn]] void fail(const std::string& message) {
    if (error_.empty()) error_ = "thread " + std::to_string(current_) + ": " + message;
    swapcontext(&fibers_[current_].context, &scheduler_);  // never resumed after an error
    std::abort();
  }

  void arrive_and_wait(Barrier& barrier, const char* where) {
    fiber().waiting_in = where;
    ++progress_;
    uint64_t releases = barrier.releases;
    if (++barrier.arrived == barrier.expected) {
      barrier.arrived = 0;
      ++barrier.releases;
      if (&barrier == &block_barrier_) ++epoch_;
      return;
    }
    while (barrier.releases == releases) swapcontext(&fiber().context, &scheduler_);
  }

  // Posts this lane's part of a collective in the next slot and waits for the whole warp; every
  // lane must be in the same collective.
  WarpExchange::Slot& exchange(Collective collective, const char* name,
                               const std::function<void(WarpExchange::Slot&)>& post) {
    WarpExchange& warp = warps_[warp_index()];
    WarpExchange::Slot& slot = warp.slots[fiber().collectives++ % 2];
    slot.collective[lane()] = collective;
    post(slot);
    arrive_and_wait(warp.barrier, name);
    for (int l = 0; l < kWarpSize; ++l)
      if (slot.collective[l] != collective)
        fail(std::string("lanes of warp ") + std::to_string(warp_index()) +
             " are in different collectives (" + name + " and another)");
    return slot;
  }

  void block_barrier() { arrive_and_wait(block_barrier_, "block_barrier"); }

  // The shared row at `address` as ldmatrix reads it: checked for place and races.
  const std::byte* shared_row_for_read(const void* address, const char* what) {
    ChunkHistory& history = chunk(address, what);
    if (history.copies_in_flight > 0)
      fail(std::string(what) + " reads a shared row whose cp.async has not been waited for");
    if (history.landed_epoch == epoch_)
      fail(std::string(what) + " reads a shared row whose cp.async landed after the last barrier");
    if (history.read_epoch != epoch_) {
      history.read_epoch = epoch_;
      history.reader_warp = warp_index();
    } else if (history.reader_warp != warp_index()) {
      history.reader_warp = kSeveralWarps;
    }
    return static_cast<const std::byte*>(address);
  }

  void start_copy(void* destination, const void* source, bool valid) {
    ChunkHistory& history = chunk(destination, "cp.async");
    if (history.copies_in_flight > 0)
      fail("cp.async into a shared row that another copy is still filling");
    if (history.read_epoch == epoch_ && history.reader_warp != warp_index())
      fail("cp.async overwrites a shared row another warp read since the last barrier");
    if (!readable(source, kChunkBytes))
      fail("cp.async source lies outside every input tensor");
    PendingCopy copy{static_cast<std::byte*>(destination), {}};
    if (valid) std::memcpy(copy.bytes.data(), source, kChunkBytes);  // src-size 16
    else std::fill(copy.bytes.begin(), copy.bytes.end(), std::byte{0});  // src-size 0
    ++history.copies_in_flight;
    fiber().uncommitted.push_back(copy);
  }

  void commit_copies() {
    fiber().committed.push_back(std::move(fiber().uncommitted));
    fiber().uncommitted.clear();
  }

  void wait_copies(size_t pending) {
    auto& committed = fiber().committed;
    while (committed.size() > pending) {
      for (const PendingCopy& copy : committed.front()) {
        std::memcpy(copy.destination, copy.bytes.data(), kChunkBytes);
        ChunkHistory& history = chunk(copy.destination, "cp.async");
        --history.copies_in_flight;
        history.landed_epoch = epoch_;
      }
      committed.pop_front();
    }
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;
  static constexpr int kMaxThreads = 256;

  BlockEmulator() : fibers_(kMaxThreads), warps_(kMaxThreads / kWarpSize) {
    for (Fiber& fiber : fibers_) fiber.stack.reset(new char[kStackBytes]);
  }

  static void fiber_main() {
    BlockEmulator& emulator = instance();
    emulator.body_(emulator.shared_.data(), emulator.current_);
    emulator.fibers_[emulator.current_].finished = true;
    ++emulator.progress_;
  }  // returns to uc_link, the scheduler

  void reset(int threads, size_t shared_bytes) {
    CST_CHECK(threads > 0 && threads <= kMaxThreads && threads % kWarpSize == 0,
              "emulated block of ", threads, " threads");
    error_.clear();
    epoch_ = 0;
    progress_ = 0;
    shared_.assign(shared_bytes, std::byte{0xff});  // every float and bf16 of it is NaN
    chunks_.assign((shared_bytes + kChunkBytes - 1) / kChunkBytes, ChunkHistory{});
    block_barrier_ = Barrier{threads};
    for (WarpExchange& warp : warps_) warp.barrier = Barrier{kWarpSize};
    for (int t = 0; t < threads; ++t) {
      Fiber& fiber = fibers_[t];
      fiber.finished = false;
      fiber.waiting_in = "";
      fiber.collectives = 0;
      fiber.uncommitted.clear();
      fiber.committed.clear();
      getcontext(&fiber.context);
      fiber.context.uc_stack.ss_sp = fiber.stack.get();
      fiber.context.uc_stack.ss_size = kStackBytes;
      fiber.context.uc_link = &scheduler_;
      makecontext(&fiber.context, &BlockEmulator::fiber_main, 0);
    }
    threads_ = threads;
  }

  ChunkHistory& chunk(const void* address, const char* what) {
    auto offset = static_cast<const std::byte*>(address) - shared_.data();
    if (offset < 0 || size_t(offset) + kChunkBytes > shared_.size())
      fail(std::string(what) + " address outside the block's shared memory");
    if (offset % kChunkBytes != 0) fail(std::string(what) + " address not 16-byte aligned");
    return chunks_[size_t(offset) / kChunkBytes];
  }

  bool readable(const void* address, size_t bytes) const {
    auto begin = reinterpret_cast<uintptr_t>(address);
    for (const auto& [start, size] : readable_) {
      auto first = reinterpret_cast<uintptr_t>(start);
      if (begin >= first && begin + bytes <= first + size) return true;
    }
    return false;
  }

  void check_copies_waited() {
    for (int t = 0; t < threads_; ++t)
      if (!fibers_[t].uncommitted.empty() || !fibers_[t].committed.empty()) {
        error_ = "thread " + std::to_string(t) + " ends with cp.async copies never waited for";
        return;
      }
  }

  std::string deadlock_report() const {
    std::map<std::string, int> waiting;
    for (int t = 0; t < threads_; ++t)
      ++waiting[fibers_[t].finished ? "finished" : fibers_[t].waiting_in];
    std::string report = "the block deadlocks:";
    for (const auto& [where, count] : waiting)
      report += " " + std::to_string(count) + " threads " +
                (where == "finished" ? "finished" : "wait in " + where) + ";";
    return report;
  }

  std::vector<Fiber> fibers_;
  std::vector<WarpExchange> warps_;
  ucontext_t scheduler_;
  std::function<void(std::byte*, int)> body_;
  std::vector<std::byte> shared_;
  std::vector<ChunkHistory> chunks_;
  std::vector<std::pair<const void*, size_t>> readable_;
  Barrier block_barrier_;
  std::string error_;
  int threads_ = 0;
  int current_ = 0;
  int64_t epoch_ = 0;       // block barriers passed
  uint64_t progress_ = 0;   // arrivals and finished fibers, to tell a deadlock from a wait
};

BlockEmulator& block() { return BlockEmulator::instance(); }

}  // namespace cst::emulation

namespace cst::cuda::flash {

using std::max;
using std::min;

// bf16 as the kernels store it: 16 bits, read as a float exactly.
struct bf16 {
  uint16_t bits;
  explicit operator float() const { return bf16_to_f32(bits); }
};

// The 16-bit element at `row_address` + 2 * column.
inline uint32_t element_bits(const std::byte* row_address, int column) {
  uint16_t bits;
  std::memcpy(&bits, row_address + 2 * column, 2);
  return bits;
}

inline void load_matrices(uint32_t (&fragment)[4], const void* row_address, bool transposed) {
  using namespace cst::emulation;
  const char* name = transposed ? "ldmatrix.trans" : "ldmatrix";
  const std::byte* own_row = block().shared_row_for_read(row_address, name);
  WarpExchange::Slot& slot = block().exchange(
      transposed ? Collective::ldmatrix_transposed : Collective::ldmatrix, name,
      [&](WarpExchange::Slot& s) { s.address[block().lane()] = own_row; });
  const int lane = block().lane();
  for (int matrix = 0; matrix < 4; ++matrix) {
    auto row = [&](int r) { return static_cast<const std::byte*>(slot.address[8 * matrix + r]); };
    uint32_t low, high;
    if (!transposed) {
      low = element_bits(row(lane / 4), 2 * (lane % 4));
      high = element_bits(row(lane / 4), 2 * (lane % 4) + 1);
    } else {
      low = element_bits(row(2 * (lane % 4)), lane / 4);
      high = element_bits(row(2 * (lane % 4) + 1), lane / 4);
    }
    fragment[matrix] = low | (high << 16);
  }
}

inline void ldmatrix_x4(uint32_t (&fragment)[4], const void* row_address) {
  load_matrices(fragment, row_address, false);
}

inline void ldmatrix_x4_transposed(uint32_t (&fragment)[4], const void* row_address) {
  load_matrices(fragment, row_address, true);
}

// Half `half` (0 = low) of a register holding two bf16, as a float.
inline float bf16_half(uint32_t reg, int half) {
  return bf16_to_f32(uint16_t(half ? reg >> 16 : reg & 0xffffu));
}

inline void mma_bf16_16x8x16(float (&accumulator)[4], const uint32_t (&a)[4], uint32_t b0,
                             uint32_t b1) {
  using namespace cst::emulation;
  WarpExchange::Slot& slot =
      block().exchange(Collective::mma, "mma", [&](WarpExchange::Slot& s) {
        const int lane = block().lane();
        std::copy(a, a + 4, s.a[lane]);
        s.b[lane][0] = b0;
        s.b[lane][1] = b1;
      });
  // Where element (row, k) of A and (k, col) of B live: which lane, register and half.
  auto a_value = [&](int row, int k) {
    int lane = (row % 8) * 4 + (k % 8) / 2, reg = row / 8 + 2 * (k / 8);
    return bf16_half(slot.a[lane][reg], k % 2);
  };
  auto b_value = [&](int k, int col) {
    int lane = col * 4 + (k % 8) / 2, reg = k / 8;
    return bf16_half(slot.b[lane][reg], k % 2);
  };
  const int lane = block().lane(), group = lane / 4, pair = lane % 4;
  for (int i = 0; i < 4; ++i) {
    int row = group + (i / 2) * 8, col = 2 * pair + i % 2;
    float sum = accumulator[i];
    for (int k = 0; k < 16; ++k) sum += a_value(row, k) * b_value(k, col);
    accumulator[i] = sum;
  }
}

inline void copy_async_16(void* shared_destination, const void* global_source, bool valid) {
  emulation::block().start_copy(shared_destination, global_source, valid);
}

inline void copy_async_commit() { emulation::block().commit_copies(); }

template <int pending>
inline void copy_async_wait() {
  emulation::block().wait_copies(pending);
}

inline void block_barrier() { emulation::block().block_barrier(); }

inline float shuffle_xor(float value, int lane_mask) {
  using namespace cst::emulation;
  WarpExchange::Slot& slot = block().exchange(
      Collective::shuffle, "shfl", [&](WarpExchange::Slot& s) { s.value[block().lane()] = value; });
  return slot.value[block().lane() ^ lane_mask];
}

inline uint32_t pack_bf16x2(float low, float high) {
  return uint32_t(f32_to_bf16(low)) | (uint32_t(f32_to_bf16(high)) << 16);
}

inline void store_bf16x2(bf16* destination, uint32_t packed) {
  std::memcpy(destination, &packed, 4);
}

inline void store_bf16(bf16* destination, float value) { destination->bits = f32_to_bf16(value); }

inline float fast_exp2(float x) { return std::exp2(x); }

}  // namespace cst::cuda::flash

#include "kernels/attention_rowwise.cuh"
#include "kernels/attention_tiles.cuh"

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
  EmulatedArray<float> lse, dout_dot_out;
  EmulatedTensors(size_t q_size, size_t kv_size, size_t lse_size)
      : q(q_size), k(kv_size), v(kv_size), dout(q_size), out(q_size), dq(q_size), dk(kv_size),
        dv(kv_size), lse(lse_size), dout_dot_out(lse_size) {}
};

// Runs one block per (tile, head, sequence) for sequences [first_sequence, sequences), like
// launch_tiles in kernels/attention.cu (blocks are independent, so leaving out the blocks of
// other sequences changes nothing for these). Returns "" or the first problem and its block.
std::string launch_tiles(
    int tiles, int heads, int first_sequence, int sequences, int shared_bytes,
    const std::function<void(char*, flash::TileCoordinates, int)>& block_body) {
  for (int sequence = first_sequence; sequence < sequences; ++sequence)
    for (int head = 0; head < heads; ++head)
      for (int tile = 0; tile < tiles; ++tile) {
        flash::TileCoordinates at{tile, head, sequence};
        std::string error =
            block().run(flash::kThreads, size_t(shared_bytes), [&](std::byte* shared, int thread) {
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

// The forward and the three backward kernels, in the order kernels/attention.cu launches them,
// for the sequences from first_sequence on, whose first token is first_token.
template <int kHeadDim>
std::string run_kernels(const flash::AttentionParams& p, int tiles, int first_sequence,
                        int sequences, int64_t first_token) {
  auto for_blocks = [&](int heads, int shared_bytes, auto block_function) {
    return launch_tiles(tiles, heads, first_sequence, sequences, shared_bytes,
                        [&](char* shared, flash::TileCoordinates at, int thread) {
                          block_function(p, shared, at, thread);
                        });
  };
  std::string error = for_blocks(p.heads, flash::forward_shared_bytes<kHeadDim>(),
                                 flash::forward_block<kHeadDim>);
  if (error.empty()) error = launch_dout_dot_out<kHeadDim>(p, first_token * p.heads);
  if (error.empty())
    error = for_blocks(p.kv_heads, flash::dkdv_shared_bytes<kHeadDim>(),
                       flash::backward_dkdv_block<kHeadDim>);
  if (error.empty())
    error = for_blocks(p.heads, flash::dq_shared_bytes<kHeadDim>(),
                       flash::backward_dq_block<kHeadDim>);
  return error;
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
  for (auto* output : {&gpu->out, &gpu->dq}) output->poison(q_rows.first(), q_rows.count());
  for (auto* output : {&gpu->dk, &gpu->dv}) output->poison(kv_rows.first(), kv_rows.count());
  for (int64_t h = 0; h < heads; ++h)
    for (auto* output : {&gpu->lse, &gpu->dout_dot_out})
      output->poison(size_t(h * tokens + first_token), size_t(checked_tokens));

  flash::AttentionParams params;
  params.q = gpu->q.data();
  params.k = gpu->k.data();
  params.v = gpu->v.data();
  params.out = gpu->out.data();
  params.lse = gpu->lse.data();
  params.dout = gpu->dout.data();
  params.dout_dot_out = gpu->dout_dot_out.data();
  params.dq = gpu->dq.data();
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
  const int tiles = (longest + flash::kTileRows - 1) / flash::kTileRows;
  ASSERT_EQ(dim == 64    ? run_kernels<64>(params, tiles, first_sequence, sequences, first_token)
            : dim == 128 ? run_kernels<128>(params, tiles, first_sequence, sequences, first_token)
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

  EXPECT_TRUE(gpu->out.guards_intact() && gpu->lse.guards_intact() && gpu->dq.guards_intact() &&
              gpu->dk.guards_intact() && gpu->dv.guards_intact() &&
              gpu->dout_dot_out.guards_intact())
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

#else  // the fibers need makecontext/swapcontext, the tensors mmap

TEST(AttentionEmulated, NeedsPosix) {
  GTEST_SKIP() << "<ucontext.h> or <sys/mman.h> is missing: the emulated flash attention test "
                  "needs them";
}

#endif
