// Models of the functions of kernels/attention_primitives.cuh, one PTX instruction each, for
// the flash attention tile code and the row-wise kernels run on the CPU (tests/emulation/
// block_emulator.h). Defining them here, before the tiles are included, keeps the CUDA versions
// out (the primitives' include guard). Each follows the section of NVIDIA's "Parallel Thread
// Execution ISA" that defines the instruction:
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
//   load_bf16_values  one 32- or 64-bit global load (ld.global.v2.u32 for 4), aligned to its size;
//       fast_exp2  "ex2" .approx.ftz.f32: exp2f with results below 2^-126 flushed to 0 (the
//       device's approximation is within 2 ulp of exp2f, far inside the tests' tolerances);
//   store_shared_bf16x2  a 32-bit "st.shared", checked by the emulator for place and races;
//   store_shared_f32x2, load_shared_f32x4  "st.shared.v2.f32", "ld.shared.v4.f32", checked by
//       the emulator for place and races like the other shared accesses;
//   load_f32x4_l2, store_f32x4_l2  "ld.global.cg.v4.f32", "st.global.cg.v4.f32", 16-byte aligned;
//   atomic_add_f32x4  "red.global.add.v4.f32": plain adds, since the emulated blocks run one at a
//       time (the schedule decides the order of the adds, as the GPU's timing does);
//   take_ticket  "atom.global.add.u32" of 1, the old value returned;
//   wait_for_turn, pass_turn  an acquire poll by thread 0 and "bar.sync"; "bar.sync" and a release
//       add by thread 0. Blocks run one at a time, so a block that finds the counter short of
//       its turn would wait forever on the GPU too, or at best for a block that started after
//       it: the emulator reports it.
//   shared_address  the block's dynamic shared memory starts kSharedWindowStart bytes into the
//       shared window: 16-byte aligned, as on the GPU, but not 1024-byte aligned, so a kernel
//       that takes its swizzle atoms' alignment for granted gets wrong products here.
//   warpgroup_multiply_shared / _registers  "wgmma.mma_async" .m64nNk16.f32.bf16.bf16 (N = 64 or
//       128; "Register Fragments and Shared Memory Matrix Layouts"): warp w of the warpgroup
//       (threads 128g .. 128g + 127) holds D rows 16w .. 16w + 15 as mma C fragments, and A's
//       same rows as an mma A fragment when A is in registers. A shared operand is read through
//       its descriptor ("Matrix Descriptor Format": start address, leading and stride byte
//       offsets in 16-byte units at bits 0, 16 and 32, swizzle mode at bit 62, of which only the
//       128-byte swizzle, 1, with base offset 0, is modelled) in the canonical layouts
//       ("Canonical Layouts", T = 8 bf16 per 16 bytes): K-major element (row, k) at byte
//       (row / 8) * stride + (row % 8) * 128 + k * 2, MN-major element (k, col) at
//       (col / 64) * leading + (col % 64) * 2 + (k / 8) * stride + (k % 8) * 128, each added to
//       the start address, whose bits 4-6 are then XORed with its bits 7-9. The sums run like
//       mma's, in k order in f32.
//   warpgroup_fence, warpgroup_commit, warpgroup_wait  "wgmma.fence", "wgmma.commit_group",
//       "wgmma.wait_group": a multiply is modelled as done, reading shared memory and writing
//       its accumulator, when its thread waits for its group, the latest moment the ISA allows,
//       so a kernel that reads the accumulator early sees it unchanged, and one that overwrites
//       an operand before waiting feeds it the new data (and the emulator reports the race).
//   async_proxy_fence  "fence.proxy.async.shared::cta": recorded; the emulator reports a
//       multiply that reads a row whose writer did not pass one and a barrier after writing.
//   hold_registers  no instruction, nothing to model.
//
// A copy is modelled as landing in shared memory when its thread waits for its group, the
// latest moment the ISA allows, so a kernel that reads a tile before waiting sees stale data.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/tensor.h"
#include "tests/emulation/block_emulator.h"

#define CST_ATTENTION_PRIMITIVES_CUH  // the CUDA versions stay out
#define CST_FLASH_DEVICE inline

namespace cst::cuda::flash {

using std::max;
using std::min;

#ifdef CST_CUDA_EMULATION
// The emulated CUDA build compiles kernels/*.cu, which mix the tile code with CUDA's own bf16.
using bf16 = __nv_bfloat16;
#else
// bf16 as the kernels store it: 16 bits, read as a float exactly.
struct bf16 {
  uint16_t bits;
  explicit operator float() const { return bf16_to_f32(bits); }
};
#endif

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
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits = uint32_t(emulation::block().shuffle_xor(bits, lane_mask));
  std::memcpy(&value, &bits, 4);
  return value;
}

inline uint32_t pack_bf16x2(float low, float high) {
  return uint32_t(f32_to_bf16(low)) | (uint32_t(f32_to_bf16(high)) << 16);
}

inline void store_bf16x2(bf16* destination, uint32_t packed) {
  std::memcpy(static_cast<void*>(destination), &packed, 4);
}

template <int kCount>
inline void load_bf16_values(const bf16* source, float (&values)[kCount]) {
  static_assert(kCount == 2 || kCount == 4, "one 4- or 8-byte load");
  CST_CHECK(reinterpret_cast<uintptr_t>(source) % (2 * kCount) == 0,
            "a ", 2 * kCount, "-byte global load from an address not aligned to its size");
  uint16_t bits[kCount];
  std::memcpy(bits, static_cast<const void*>(source), sizeof(bits));
  for (int k = 0; k < kCount; ++k) values[k] = bf16_to_f32(bits[k]);
}

inline void store_bf16(bf16* destination, float value) {
  uint16_t bits = f32_to_bf16(value);
  std::memcpy(static_cast<void*>(destination), &bits, 2);
}

inline float fast_exp2(float x) {
  const float result = std::exp2(x);
  return std::fpclassify(result) == FP_SUBNORMAL ? 0.0f : result;  // .ftz
}

inline void store_shared_bf16x2(bf16* shared_destination, uint32_t packed) {
  emulation::block().store_shared(shared_destination, &packed, sizeof(packed));
}

inline void store_shared_f32x2(float* shared_destination, float low, float high) {
  const float values[2] = {low, high};
  emulation::block().store_shared(shared_destination, values, sizeof(values));
}

inline void load_shared_f32x4(const float* shared_source, float (&values)[4]) {
  std::memcpy(values, emulation::block().shared_row_for_read(shared_source, "ld.shared.v4.f32"),
              sizeof(values));
}

inline void check_16_byte_aligned(const void* address, const char* what) {
  CST_CHECK(reinterpret_cast<uintptr_t>(address) % 16 == 0, what,
            " of 16 bytes at an address not aligned to 16");
}

inline void load_f32x4_l2(const float* source, float (&values)[4]) {
  check_16_byte_aligned(source, "ld.global.cg.v4.f32");
  std::memcpy(values, source, sizeof(values));
}

inline void store_f32x4_l2(float* destination, const float (&values)[4]) {
  check_16_byte_aligned(destination, "st.global.cg.v4.f32");
  std::memcpy(destination, values, sizeof(values));
}

inline void atomic_add_f32x4(float* destination, const float (&values)[4]) {
  check_16_byte_aligned(destination, "red.global.add.v4.f32");
  for (int i = 0; i < 4; ++i) destination[i] += values[i];
}

inline int take_ticket(int* counter) { return (*counter)++; }

inline void wait_for_turn(const int* turn, int value, int thread) {
  if (thread == 0 && *turn != value)
    emulation::block().fail("waits for turn " + std::to_string(value) + " of a counter at " +
                            std::to_string(*turn) + ", which no block that ran before it passed on");
  emulation::block().block_barrier();
}

inline void pass_turn(int* turn, int thread) {
  emulation::block().block_barrier();
  if (thread == 0) ++*turn;
}

// ---- warpgroup multiplies ----

constexpr uint32_t kSharedWindowStart = 0x410;

inline uint32_t shared_address(const void* pointer) {
  const auto offset = static_cast<const std::byte*>(pointer) - emulation::block().dynamic_shared();
  return kSharedWindowStart + uint32_t(offset);
}

inline void async_proxy_fence() { emulation::block().async_proxy_fence(); }
template <class T, int kRows, int kColumns>
inline void hold_registers(T (&)[kRows][kColumns]) {}
inline void warpgroup_fence() {}
inline void warpgroup_commit() { emulation::block().commit_async(); }
template <int pending>
inline void warpgroup_wait() {
  emulation::block().wait_async(pending);
}

struct SharedMatrix {
  uint32_t start, leading_bytes, stride_bytes;
};

inline SharedMatrix decode_descriptor(uint64_t descriptor) {
  auto field = [&](int bit) { return uint32_t((descriptor >> bit) & 0x3FFF) << 4; };
  if ((descriptor >> 62) != 1 || ((descriptor >> 49) & 7) != 0)
    emulation::block().fail("a wgmma descriptor whose swizzle is not 128 bytes with base offset 0");
  return {field(0), field(16), field(32)};
}

// The bf16 at a shared-window address after the 128-byte swizzle, read through the async proxy.
inline float swizzled_shared_bf16(uint32_t address) {
  address ^= ((address >> 7) & 7) << 4;
  const std::byte* row =
      emulation::block().dynamic_shared() + (address & ~15u) - kSharedWindowStart;
  return bf16_to_f32(uint16_t(element_bits(
      emulation::block().shared_row_for_async_read(row, "wgmma"), int(address & 15) / 2)));
}

inline float k_major_element(const SharedMatrix& m, int row, int k) {
  return swizzled_shared_bf16(m.start +
                              uint32_t((row / 8) * m.stride_bytes + (row % 8) * 128 + k * 2));
}

inline float mn_major_element(const SharedMatrix& m, int k, int col) {
  return swizzled_shared_bf16(m.start + uint32_t((col / 64) * m.leading_bytes + (col % 64) * 2 +
                                                 (k / 8) * m.stride_bytes + (k % 8) * 128));
}

// Starts d (kColumns / 8 n8 tiles of this thread) = the sum over k of a(row, k) * b(k, col),
// plus d when `accumulate`, rows counted within the warpgroup: done when the thread waits.
template <int kColumns, class A, class B>
void start_warpgroup_multiply(float (&d)[kColumns / 8][4], A a, B b, bool accumulate) {
  const int lane = emulation::block().lane();
  const int warp_row0 = emulation::block().thread() % 128 / 32 * 16;
  emulation::block().start_async([&d, a, b, accumulate, lane, warp_row0] {
    for (int n = 0; n < kColumns / 8; ++n)
      for (int e = 0; e < 4; ++e) {
        const int row = warp_row0 + lane / 4 + (e / 2) * 8, col = n * 8 + (lane % 4) * 2 + e % 2;
        float sum = accumulate ? d[n][e] : 0.0f;
        for (int k = 0; k < 16; ++k) sum += a(row, k) * b(k, col);
        d[n][e] = sum;
      }
  });
}

inline void warpgroup_multiply_shared(float (&d)[8][4], uint64_t a_descriptor,
                                      uint64_t b_descriptor, bool accumulate) {
  emulation::block().exchange(emulation::Collective::warpgroup_multiply, "wgmma",
                              [](emulation::WarpExchange::Slot&) {});
  const SharedMatrix a = decode_descriptor(a_descriptor), b = decode_descriptor(b_descriptor);
  start_warpgroup_multiply<64>(
      d, [a](int row, int k) { return k_major_element(a, row, k); },
      [b](int k, int col) { return k_major_element(b, col, k); }, accumulate);
}

template <int kColumns>
inline void warpgroup_multiply_registers(float (&d)[kColumns / 8][4], const uint32_t (&a)[4],
                                         uint64_t b_descriptor) {
  using namespace cst::emulation;
  const WarpExchange::Slot& slot =
      block().exchange(Collective::warpgroup_multiply, "wgmma", [&](WarpExchange::Slot& s) {
        std::copy(a, a + 4, s.a[block().lane()]);
      });
  // The warp's A fragment, as mma_bf16_16x8x16 reads it; rows within the warpgroup.
  std::array<std::array<uint32_t, 4>, kWarpSize> fragments;
  for (int l = 0; l < kWarpSize; ++l)
    std::copy(slot.a[l], slot.a[l] + 4, fragments[size_t(l)].begin());
  auto a_value = [fragments](int row, int k) {
    row %= 16;
    const int lane = (row % 8) * 4 + (k % 8) / 2, reg = row / 8 + 2 * (k / 8);
    return bf16_half(fragments[size_t(lane)][size_t(reg)], k % 2);
  };
  const SharedMatrix b = decode_descriptor(b_descriptor);
  start_warpgroup_multiply<kColumns>(
      d, a_value, [b](int k, int col) { return mn_major_element(b, k, col); }, true);
}

}  // namespace cst::cuda::flash
