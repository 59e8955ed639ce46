// The warp-level building blocks of the flash attention kernels (sm_80+), each one PTX
// instruction behind a name that says what it does:
//
//   ldmatrix_x4 / ldmatrix_x4_transposed   four 8x8 bf16 tiles from shared memory into the
//                                           register fragments mma expects
//   mma_bf16_16x8x16                        D (16x8 f32) += A (16x16 bf16) * B (16x8 bf16)
//   copy_async_16                           a 16-byte global -> shared copy that does not block
//                                           (zero-filled when the source row does not exist)
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"), with group = lane / 4 and pair = lane % 4:
//   A: a0 = (row group,   cols 2*pair, +1)   a1 = (row group+8, cols 2*pair, +1)
//      a2 = (row group,   cols 2*pair+8, +9) a3 = (row group+8, cols 2*pair+8, +9)
//   B: b0 = (rows 2*pair, +1, col group)     b1 = (rows 2*pair+8, +9, col group)
//   C: c0, c1 = (row group, cols 2*pair, +1) c2, c3 = (row group+8, cols 2*pair, +1)
// ldmatrix gives lane l the two elements (row l/4, cols 2*(l%4), +1) of each 8x8 tile, whose row
// addresses come from lanes 8*tile .. 8*tile+7; the transposed form gives (rows 2*(l%4), +1, col
// l/4) instead. These identities are what the kernels rely on to go from shared memory to mma
// operands, and from an mma result (C layout) straight to the next mma's A operand.
//
// A classic include guard (not #pragma once) so a host-side model of these instructions can
// stand in for this file when the tile code is exercised off the GPU.
#ifndef CST_ATTENTION_PRIMITIVES_CUH
#define CST_ATTENTION_PRIMITIVES_CUH

#include <cuda_bf16.h>
#include <cstdint>

namespace cst::cuda::flash {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return uint32_t(__cvta_generic_to_shared(pointer));
}

// Lane l passes the address of one 16-byte row: rows of tile t come from lanes 8t..8t+7.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&fragment)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row_address)));
}

__device__ __forceinline__ void ldmatrix_x4_transposed(uint32_t (&fragment)[4],
                                                       const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row_address)));
}

__device__ __forceinline__ void mma_bf16_16x8x16(float (&accumulator)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (rows past a sequence's end),
// so the tile in shared memory never holds stale data. The source must be a readable address
// even when not valid; callers pass the tensor's base then.
__device__ __forceinline__ void copy_async_16(void* shared_destination, const void* global_source,
                                              bool valid) {
  int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :
               : "r"(shared_address(shared_destination)), "l"(global_source), "r"(source_bytes));
}

__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n"); }

// Waits until at most `pending` committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" : : "n"(pending));
}

__device__ __forceinline__ void block_barrier() { __syncthreads(); }

// Reductions over the four lanes (one quad) that share the rows of an mma C fragment.
__device__ __forceinline__ float quad_max(float value) {
  value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 1));
  return fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 2));
}

__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  return value + __shfl_xor_sync(0xffffffffu, value, 2);
}

__device__ __forceinline__ float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Two floats rounded to bf16 and packed as one 32-bit mma operand register (low half first).
__device__ __forceinline__ uint32_t pack_bf16x2(float low, float high) {
  __nv_bfloat162 packed = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<uint32_t*>(&packed);
}

__device__ __forceinline__ float fast_exp2(float x) { return exp2f(x); }

}  // namespace cst::cuda::flash

#endif  // CST_ATTENTION_PRIMITIVES_CUH
