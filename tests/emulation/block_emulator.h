// One CUDA thread block run on the CPU: every thread is a fiber, switched cooperatively on one
// core at barriers and warp collectives, so kernel code written for the GPU runs unchanged and
// deterministically. Used by tests/test_attention_emulated.cpp (the flash attention tile bodies)
// and by the emulated CUDA build (tests/emulation/cuda_builtins.h), where every kernel of
// kernels/*.cu runs here block by block.
//
// Beyond running the code, it reports what the GPU would leave undefined or deadlocked:
//   - a thread that misses a barrier or a warp collective (the block deadlocks; reported, not
//     hung), the lanes of a warp in different collectives (.sync.aligned);
//   - for the 16-byte rows of dynamic shared memory that cp.async and ldmatrix touch (tracked per
//     barrier interval, "epoch"): shared addresses outside the block's dynamic shared memory or
//     not 16-byte aligned, cp.async sources outside the readable ranges, ldmatrix of a row whose
//     copy is in flight or landed after the last barrier, cp.async into a row another warp read
//     since the last barrier or that a copy is still filling, a thread ending with copies nobody
//     waited for;
//   - plain stores to shared memory made through the model's store_shared (st.shared): misplaced
//     or misaligned, into a row a copy is still filling or another warp read since the last
//     barrier, and ldmatrix or cp.async of a row another warp stored to since the last barrier;
//   - asynchronous work (the warpgroup multiplies, which read shared memory when they run, i.e.
//     when their thread waits for them): a thread ending with some never waited for, and reads
//     through the async proxy of a row whose writer (by cp.async or st.shared) did not pass a
//     fence.proxy.async and then a barrier after writing it.
// The fibers take turns only at collectives and barriers, so timing-dependent races between them
// cannot be provoked here: compute-sanitizer racecheck on the GPU covers those. What can be
// provoked is a race whose outcome depends on which thread or block goes first: the schedule
// (CST_EMULATED_SCHEDULE=in_order, reversed or shuffled[:seed]) sets the order in which the
// fibers take their turns and the grid's blocks run; shuffled also has fibers sit out runs of
// rounds, so that a thread can trail the others by several collectives (sits_out). A kernel
// whose threads exchange data without the barrier that orders them, or whose blocks depend on
// each other's writes within one launch, gives different results under different schedules;
// `make test` runs the kernel tests under all three.
//
// A switch between fibers is switch_stacks below, a few instructions of x86-64 (the kernels'
// shuffles switch millions of times per launch; glibc's swapcontext makes a system call for the
// signal mask each time, which made the emulation several times slower). Built with
// AddressSanitizer (`make sanitize`), every switch also tells it which stack runs next.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/error.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CST_EMULATION_ASAN 1
#else
#define CST_EMULATION_ASAN 0
#define ASAN_UNPOISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#endif

#if !defined(__x86_64__)
#error "the CUDA emulation switches fibers with x86-64 instructions"
#endif

namespace cst::emulation {

// Saves the callee-saved registers on the running stack, stores its stack pointer in *save,
// then continues on the stack `load` (left by an earlier switch, or made by start_stack), whose
// registers it pops before returning to where that stack left off. The System V ABI lets a call
// clobber every other register, and the fibers never change the FPU or SSE control words.
__attribute__((naked, noinline)) static void switch_stacks(void** /*save*/, void* /*load*/) {
  asm volatile(
      "pushq %rbp\n pushq %rbx\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
      "movq %rsp, (%rdi)\n"
      "movq %rsi, %rsp\n"
      "popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbx\n popq %rbp\n"
      "ret\n");
}

// A new stack whose first switch_stacks "returns" into entry: six zero registers and entry as
// the return address, placed so that entry starts with the stack aligned as after a call.
inline void* start_stack(char* stack, size_t bytes, void (*entry)()) {
  auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  auto* slots = reinterpret_cast<void**>(top - 64);
  for (int i = 0; i < 6; ++i) slots[i] = nullptr;
  slots[6] = reinterpret_cast<void*>(entry);
  slots[7] = nullptr;
  return slots;
}

constexpr int kWarpSize = 32;
constexpr int kChunkBytes = 16;  // one ldmatrix row, one cp.async

// A block's or grid's extent, as dim3 gives it.
struct Extent {
  unsigned x = 1, y = 1, z = 1;
  int64_t count() const { return int64_t(x) * y * z; }
};

// Fibers that wait here until `expected` of them have arrived.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t releases = 0;
};

enum class Collective { ldmatrix, ldmatrix_transposed, mma, shuffle, warpgroup_multiply };

// The order in which the fibers of a block take their turns, and the blocks of a grid run:
// thread (block) 0 first, the last first, or a fresh random order for every round of turns and
// every launch, drawn from `seed`, with fibers now and then sitting out rounds.
struct Schedule {
  enum class Order { in_order, reversed, shuffled } order = Order::in_order;
  uint64_t seed = 0;
};

// The schedule CST_EMULATED_SCHEDULE names: "in_order" (or unset), "reversed", "shuffled" or
// "shuffled:<seed>".
inline Schedule schedule_from_environment() {
  const char* value = std::getenv("CST_EMULATED_SCHEDULE");
  const std::string name = value ? value : "";
  Schedule schedule;
  if (name.empty() || name == "in_order") return schedule;
  if (name == "reversed") {
    schedule.order = Schedule::Order::reversed;
    return schedule;
  }
  const std::string shuffled = "shuffled";
  if (name.rfind(shuffled, 0) == 0) {
    schedule.order = Schedule::Order::shuffled;
    if (name.size() == shuffled.size()) return schedule;
    const std::string seed = name.substr(shuffled.size() + 1);
    if (name[shuffled.size()] == ':' && !seed.empty() &&
        seed.find_first_not_of("0123456789") == std::string::npos) {
      schedule.seed = std::stoull(seed);
      return schedule;
    }
  }
  fail("CST_EMULATED_SCHEDULE is '", name, "'; it must be in_order, reversed, shuffled or shuffled:<seed>");
}

// What the lanes of a warp hand each other in a collective. Two slots alternate, so one barrier
// per collective is enough: a lane writes slot c % 2 at its c-th collective and reaches slot
// c % 2 again only after every lane has passed collective c + 1, i.e. finished reading slot c % 2.
struct WarpExchange {
  struct Slot {
    Collective collective[kWarpSize];
    const void* address[kWarpSize];
    uint32_t a[kWarpSize][4];
    uint32_t b[kWarpSize][2];
    uint64_t value[kWarpSize];  // a shuffled value's bits
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
  int writer = -1;                  // the thread whose cp.async landed, or st.shared wrote, last
  uint64_t writer_proxy_fences = 0;  // the fence.proxy.async that thread had passed by then
  int64_t landed_epoch = -1;
  int64_t read_epoch = -1;
  int reader_warp = -1;  // kSeveralWarps when more than one warp read it in read_epoch
  int64_t stored_epoch = -1;  // the same for plain stores
  int storer_warp = -1;
};
constexpr int kSeveralWarps = -2;

struct Fiber {
  void* stack_pointer = nullptr;  // where switch_stacks left it
  std::unique_ptr<char[]> stack;
  bool finished = false;
  const char* waiting_in = "";  // the collective or barrier it last waited at, for deadlocks
  uint64_t collectives = 0;     // selects the exchange slot
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> committed;
  std::vector<std::function<void()>> uncommitted_async;  // the same for asynchronous work
  std::deque<std::vector<std::function<void()>>> committed_async;
  uint64_t proxy_fences = 0;             // fence.proxy.async passed
  uint64_t proxy_fences_at_barrier = 0;  // of which before its last block barrier
};

// One block at a time: its fibers, shared memory and the bookkeeping of the checks.
class BlockEmulator {
 public:
  static constexpr int kMaxThreads = 1024;

  static BlockEmulator& instance() {
    static BlockEmulator emulator;
    return emulator;
  }

  // Address ranges cp.async may read from (the input tensors).
  void set_readable(std::vector<std::pair<const void*, size_t>> ranges) {
    readable_ = std::move(ranges);
  }

  // Runs body(shared, thread) for threads 0..threads-1 of one block with `shared_bytes` of
  // dynamic shared memory (filled with NaN bytes). Returns "" or the first problem found.
  std::string run(int threads, size_t shared_bytes, std::function<void(std::byte*, int)> body) {
    return run(Extent{unsigned(threads)}, Extent{}, Extent{}, shared_bytes, std::move(body));
  }

  // The same for block `block_index` of a grid of `grid` blocks of `block` threads each; the
  // running thread's coordinates are thread_index() and block_index().
  std::string run(Extent block, Extent block_index, Extent grid, size_t shared_bytes,
                  std::function<void(std::byte*, int)> body) {
    reset(block, shared_bytes);
    block_index_ = block_index;
    grid_ = grid;
    body_ = std::move(body);
    int live = threads_;
    while (live > 0 && error_.empty()) {
      uint64_t progress_before = progress_;
      put_in_schedule_order(turns_, threads_);
      bool lagging = false;  // whether some fiber sat out this round
      for (int t : turns_) {
        if (!error_.empty()) break;
        if (fibers_[t].finished) continue;
        if (sits_out(t)) {
          lagging = true;
          continue;
        }
        current_ = t;
        switch_to_fiber(t);
        if (fibers_[t].finished) --live;
      }
      if (live == 0 || !error_.empty() || progress_ != progress_before) continue;
      // Nothing moved: with every fiber given its turn that is a deadlock, else the laggards
      // may be the ones the others wait for, and they rejoin.
      if (!lagging) error_ = deadlock_report();
      std::fill(rounds_to_sit_out_.begin(), rounds_to_sit_out_.end(), 0);
    }
    if (error_.empty()) check_nothing_left_pending();
    return error_;
  }

  // The schedule for the launches that follow (tests/emulation/test_cuda_emulation.cpp); the
  // emulator starts with the one CST_EMULATED_SCHEDULE names.
  void set_schedule(const Schedule& schedule) {
    schedule_ = schedule;
    random_.seed(schedule.seed);
  }
  const Schedule& schedule() const { return schedule_; }

  // Fills `order` with 0..count-1 in the schedule's order: the fibers' turns in one round, or
  // the blocks of a grid (cuda_runtime.cpp). Shuffled, every call draws a new order.
  template <class Index>
  void put_in_schedule_order(std::vector<Index>& order, Index count) {
    order.resize(size_t(count));
    std::iota(order.begin(), order.end(), Index{0});
    if (schedule_.order == Schedule::Order::reversed) std::reverse(order.begin(), order.end());
    if (schedule_.order == Schedule::Order::shuffled) std::shuffle(order.begin(), order.end(), random_);
  }

  // Shuffled, now and then a fiber sits out a run of rounds (1 to 32) while the others go on, so
  // that it falls behind them by several collectives, as a warp can on the GPU: a thread that
  // reads shared memory after a barrier then reads it late, after other warps have moved on.
  // Without that, every fiber takes one turn per round and no thread ever trails the others by
  // more than one collective, which hides a block that reuses shared memory one barrier too early.
  bool sits_out(int t) {
    if (schedule_.order != Schedule::Order::shuffled) return false;
    int& rounds = rounds_to_sit_out_[size_t(t)];
    if (rounds == 0 && random_() % 64 == 0) rounds = 1 + int(random_() % 32);
    if (rounds == 0) return false;
    --rounds;
    return true;
  }

  // ---- used by the models, from inside a fiber ----

  int thread() const { return current_; }
  int lane() const { return current_ % kWarpSize; }
  int warp_index() const { return current_ / kWarpSize; }
  Fiber& fiber() { return fibers_[current_]; }
  Extent thread_index() const {
    return {unsigned(current_) % block_.x, unsigned(current_) / block_.x % block_.y,
            unsigned(current_) / (block_.x * block_.y)};
  }
  Extent block_index() const { return block_index_; }
  Extent block_extent() const { return block_; }
  Extent grid_extent() const { return grid_; }
  std::byte* dynamic_shared() { return shared_.data(); }

  [[noreturn]] void fail(const std::string& message) {
    if (error_.empty()) error_ = "thread " + std::to_string(current_) + ": " + message;
    leave_for_good();
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
    while (barrier.releases == releases) switch_to_scheduler();
  }

  // Posts this lane's part of a collective in the next slot and waits for the whole warp; every
  // lane must be in the same collective.
  // Each lane compares its collective with lane 0's: if any two differ, some lane differs from
  // lane 0 and reports it.
  template <class Post>
  WarpExchange::Slot& exchange(Collective collective, const char* name, const Post& post) {
    WarpExchange& warp = warps_[warp_index()];
    WarpExchange::Slot& slot = warp.slots[fiber().collectives++ % 2];
    slot.collective[lane()] = collective;
    post(slot);
    arrive_and_wait(warp.barrier, name);
    if (slot.collective[0] != collective)
      fail(std::string("lanes of warp ") + std::to_string(warp_index()) +
           " are in different collectives (" + name + " and another)");
    return slot;
  }

  // shfl.sync .bfly with a full member mask: lane l gets the bits lane l ^ lane_mask posted.
  uint64_t shuffle_xor(uint64_t bits, int lane_mask) {
    WarpExchange::Slot& slot = exchange(Collective::shuffle, "shfl",
                                        [&](WarpExchange::Slot& s) { s.value[lane()] = bits; });
    int source = lane() ^ lane_mask;
    if (source >= warps_[warp_index()].barrier.expected)
      fail("shfl.sync reads lane " + std::to_string(source) + ", past the end of a partial warp");
    return slot.value[source];
  }

  void block_barrier() {
    fiber().proxy_fences_at_barrier = fiber().proxy_fences;
    arrive_and_wait(block_barrier_, "block_barrier");
  }

  void async_proxy_fence() { ++fiber().proxy_fences; }

  // The shared row at `address` as the async proxy reads it (a warpgroup multiply): the checks
  // of shared_row_for_read, and its writer's fence.proxy.async before a barrier.
  const std::byte* shared_row_for_async_read(const void* address, const char* what) {
    const std::byte* row = shared_row_for_read(address, what);
    const ChunkHistory& history = chunk(address, what);
    if (history.writer >= 0 &&
        fibers_[size_t(history.writer)].proxy_fences_at_barrier <= history.writer_proxy_fences)
      fail(std::string(what) + " reads a shared row that thread " + std::to_string(history.writer) +
           " wrote without a fence.proxy.async and a barrier after it");
    return row;
  }

  // Asynchronous work of the running thread, done when the thread waits for its group: started,
  // closed in groups by commit_async, and wait_async(n) returns once at most n groups are left.
  void start_async(std::function<void()> work) {
    fiber().uncommitted_async.push_back(std::move(work));
  }
  void commit_async() {
    fiber().committed_async.push_back(std::move(fiber().uncommitted_async));
    fiber().uncommitted_async.clear();
  }
  void wait_async(size_t pending) {
    auto& committed = fiber().committed_async;
    while (committed.size() > pending) {
      std::vector<std::function<void()>> group = std::move(committed.front());
      committed.pop_front();
      for (auto& work : group) work();
    }
  }

  // The shared row at `address` as ldmatrix reads it: checked for place and races.
  const std::byte* shared_row_for_read(const void* address, const char* what) {
    ChunkHistory& history = chunk(address, what);
    if (history.copies_in_flight > 0)
      fail(std::string(what) + " reads a shared row whose cp.async has not been waited for");
    if (history.landed_epoch == epoch_)
      fail(std::string(what) + " reads a shared row whose cp.async landed after the last barrier");
    if (stored_by_another_warp(history))
      fail(std::string(what) + " reads a shared row another warp stored to since the last barrier");
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
    if (stored_by_another_warp(history))
      fail("cp.async overwrites a shared row another warp stored to since the last barrier");
    if (!readable(source, kChunkBytes))
      fail("cp.async source lies outside every input tensor");
    PendingCopy copy{static_cast<std::byte*>(destination), {}};
    if (valid) std::memcpy(copy.bytes.data(), source, kChunkBytes);  // src-size 16
    else std::fill(copy.bytes.begin(), copy.bytes.end(), std::byte{0});  // src-size 0
    ++history.copies_in_flight;
    fiber().uncommitted.push_back(copy);
  }

  // A plain store of `bytes` (a power of two up to 16) to shared memory.
  void store_shared(void* destination, const void* value, size_t bytes) {
    auto offset = static_cast<std::byte*>(destination) - shared_.data();
    if (offset < 0 || size_t(offset) + bytes > shared_.size())
      fail("st.shared address outside the block's shared memory");
    if (size_t(offset) % bytes != 0) fail("st.shared address not aligned to its size");
    ChunkHistory& history = chunks_[size_t(offset) / kChunkBytes];
    if (history.copies_in_flight > 0)
      fail("st.shared into a shared row that a cp.async is still filling");
    if (history.read_epoch == epoch_ && history.reader_warp != warp_index())
      fail("st.shared overwrites a shared row another warp read since the last barrier");
    history.storer_warp = stored_by_another_warp(history) ? kSeveralWarps : warp_index();
    history.stored_epoch = epoch_;
    note_writer(history);
    std::memcpy(destination, value, bytes);
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
        note_writer(history);
      }
      committed.pop_front();
    }
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;

  BlockEmulator() : fibers_(kMaxThreads), warps_(kMaxThreads / kWarpSize) {
    set_schedule(schedule_from_environment());
  }

  // A fiber's whole life: the body, then back to the scheduler for good.
  static void fiber_main() {
    BlockEmulator& emulator = instance();
#if CST_EMULATION_ASAN
    // Arrived here from the scheduler, whose stack this learns.
    __sanitizer_finish_switch_fiber(nullptr, &emulator.scheduler_stack_bottom_,
                                    &emulator.scheduler_stack_bytes_);
#endif
    emulator.body_(emulator.shared_.data(), emulator.current_);
    emulator.fibers_[emulator.current_].finished = true;
    ++emulator.progress_;
    emulator.leave_for_good();
  }

  // switch_stacks to the stack `load` (whose memory is [bottom, bottom + bytes)), telling
  // AddressSanitizer, when it is on, which stack runs from here until the switch back.
  static void switch_to(void** save, void* load, const void* bottom, size_t bytes) {
#if CST_EMULATION_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, bottom, bytes);
    switch_stacks(save, load);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)bottom, (void)bytes;
    switch_stacks(save, load);
#endif
  }

  // The scheduler hands the running thread to fiber t, until it switches back.
  void switch_to_fiber(int t) {
    switch_to(&scheduler_stack_pointer_, fibers_[t].stack_pointer, fibers_[t].stack.get(),
              kStackBytes);
  }

  // The running fiber waits: back to the scheduler, until its next turn.
  void switch_to_scheduler() {
    switch_to(&fiber().stack_pointer, scheduler_stack_pointer_, scheduler_stack_bottom_,
              scheduler_stack_bytes_);
  }

  // The running fiber is done (finished, or failed): back to the scheduler, never resumed.
  [[noreturn]] void leave_for_good() {
#if CST_EMULATION_ASAN
    __sanitizer_start_switch_fiber(nullptr, scheduler_stack_bottom_, scheduler_stack_bytes_);
#endif
    switch_stacks(&fiber().stack_pointer, scheduler_stack_pointer_);
    std::abort();
  }

  void reset(Extent block, size_t shared_bytes) {
    const int64_t threads = block.count();
    CST_CHECK(threads > 0 && threads <= kMaxThreads, "emulated block of ", threads, " threads");
    block_ = block;
    threads_ = int(threads);
    error_.clear();
    epoch_ = 0;
    progress_ = 0;
    std::fill(rounds_to_sit_out_.begin(), rounds_to_sit_out_.end(), 0);
    shared_.assign(shared_bytes, std::byte{0xff});  // every float and bf16 of it is NaN
    chunks_.assign((shared_bytes + kChunkBytes - 1) / kChunkBytes, ChunkHistory{});
    block_barrier_ = Barrier{threads_};
    // The last warp of a block whose size is not a multiple of 32 has fewer lanes.
    for (int w = 0; w * kWarpSize < threads_; ++w)
      warps_[w].barrier = Barrier{std::min(kWarpSize, threads_ - w * kWarpSize)};
    for (int t = 0; t < threads_; ++t) {
      Fiber& fiber = fibers_[t];
      if (!fiber.stack) fiber.stack.reset(new char[kStackBytes]);  // first use: stacks cost
      // A fiber left waiting when its block failed leaves its frames' poison behind.
      ASAN_UNPOISON_MEMORY_REGION(fiber.stack.get(), kStackBytes);
      fiber.finished = false;                                     // only what blocks use
      fiber.waiting_in = "";
      fiber.collectives = 0;
      fiber.uncommitted.clear();
      fiber.committed.clear();
      fiber.uncommitted_async.clear();
      fiber.committed_async.clear();
      fiber.proxy_fences = fiber.proxy_fences_at_barrier = 0;
      fiber.stack_pointer = start_stack(fiber.stack.get(), kStackBytes, &BlockEmulator::fiber_main);
    }
  }

  ChunkHistory& chunk(const void* address, const char* what) {
    auto offset = static_cast<const std::byte*>(address) - shared_.data();
    if (offset < 0 || size_t(offset) + kChunkBytes > shared_.size())
      fail(std::string(what) + " address outside the block's shared memory");
    if (offset % kChunkBytes != 0) fail(std::string(what) + " address not 16-byte aligned");
    return chunks_[size_t(offset) / kChunkBytes];
  }

  void note_writer(ChunkHistory& history) {
    history.writer = current_;
    history.writer_proxy_fences = fiber().proxy_fences;
  }

  bool stored_by_another_warp(const ChunkHistory& history) const {
    return history.stored_epoch == epoch_ && history.storer_warp != warp_index();
  }

  bool readable(const void* address, size_t bytes) const {
    auto begin = reinterpret_cast<uintptr_t>(address);
    for (const auto& [start, size] : readable_) {
      auto first = reinterpret_cast<uintptr_t>(start);
      if (begin >= first && begin + bytes <= first + size) return true;
    }
    return false;
  }

  void check_nothing_left_pending() {
    for (int t = 0; t < threads_; ++t)
      if (!fibers_[t].uncommitted.empty() || !fibers_[t].committed.empty()) {
        error_ = "thread " + std::to_string(t) + " ends with cp.async copies never waited for";
        return;
      }
    for (int t = 0; t < threads_; ++t)
      if (!fibers_[t].uncommitted_async.empty() || !fibers_[t].committed_async.empty()) {
        error_ = "thread " + std::to_string(t) + " ends with asynchronous work never waited for";
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

  Schedule schedule_;
  std::mt19937_64 random_;  // draws the shuffled orders
  std::vector<int> turns_;  // the fibers' order in the current round
  std::vector<Fiber> fibers_;
  std::vector<WarpExchange> warps_;
  void* scheduler_stack_pointer_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;  // the stack run() runs on, for AddressSanitizer
  size_t scheduler_stack_bytes_ = 0;               // (learnt by fiber_main when it is on)
  std::function<void(std::byte*, int)> body_;
  std::vector<std::byte> shared_;
  std::vector<ChunkHistory> chunks_;
  std::vector<std::pair<const void*, size_t>> readable_;
  Barrier block_barrier_;
  std::string error_;
  Extent block_, block_index_, grid_;
  int threads_ = 0;
  int current_ = 0;
  int64_t epoch_ = 0;       // block barriers passed
  uint64_t progress_ = 0;   // arrivals and finished fibers, to tell a deadlock from a wait
  std::vector<int> rounds_to_sit_out_ = std::vector<int>(kMaxThreads, 0);  // per fiber (sits_out)
};

inline BlockEmulator& block() { return BlockEmulator::instance(); }

}  // namespace cst::emulation
