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
//
// A copy is modelled as landing in shared memory when its thread waits for its group, the
// latest moment the ISA allows, so a kernel that reads a tile before waiting sees stale data.
#pragma once

#include <algorithm>
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

}  // namespace cst::cuda::flash
