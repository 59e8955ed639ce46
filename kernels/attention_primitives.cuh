// The warp-level building blocks of the flash attention kernels (sm_80+), each one PTX
// instruction behind a name that says what it does:
//
//   ldmatrix_x4 / ldmatrix_x4_transposed   four 8x8 bf16 tiles from shared memory into the
//                                           register fragments mma expects
//   mma_bf16_16x8x16                        D (16x8 f32) += A (16x16 bf16) * B (16x8 bf16)
//   copy_async_16                           a 16-byte global -> shared copy that does not block
//                                           (zero-filled when the source row does not exist)
//   copy_async_commit / copy_async_wait     close a group of copies / wait for groups
//   block_barrier, shuffle_xor, pack_bf16x2, store_bf16x2, store_bf16, fast_exp2,
//   load_bf16_values
//   store_shared_bf16x2                     one 32-bit store to shared memory
//   store_shared_f32x2 / load_shared_f32x4  f32 to and from shared memory
//   load_f32x4_l2 / store_f32x4_l2          16 bytes of f32 global memory, through L2 only
//   atomic_add_f32x4                        four f32 adds to global memory that no other add
//                                           can interleave with (their order is not fixed)
//   take_ticket, wait_for_turn, pass_turn   counters in global memory that order blocks
//   shared_address                          the 32-bit shared-window address of a pointer
//   warpgroup_fence, warpgroup_commit,      the sm_90a warpgroup matrix multiplies (wgmma) and
//   warpgroup_wait, async_proxy_fence,      their ordering: below, "Warpgroup matrix multiplies"
//   warpgroup_multiply_shared,
//   warpgroup_multiply_registers, hold_registers
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// with group = lane / 4 and pair = lane % 4; each 32-bit register holds two bf16, the lower
// column (A, C) or row (B) in the low half:
//   A: a0 = (row group,   cols 2*pair, +1)   a1 = (row group+8, cols 2*pair, +1)
//      a2 = (row group,   cols 2*pair+8, +9) a3 = (row group+8, cols 2*pair+8, +9)
//   B: b0 = (rows 2*pair, +1, col group)     b1 = (rows 2*pair+8, +9, col group)
//   C: c0, c1 = (row group, cols 2*pair, +1) c2, c3 = (row group+8, cols 2*pair, +1)
// ldmatrix (PTX ISA, "ldmatrix") gives lane l the two elements (row l/4, cols 2*(l%4), +1) of
// each 8x8 tile, whose row addresses come from lanes 8*tile .. 8*tile+7; the transposed form
// gives (rows 2*(l%4), +1, col l/4) instead. These identities are what the kernels rely on to go
// from shared memory to mma operands, and from an mma result (C layout) straight to the next
// mma's A operand.
//
// The tile code (kernels/attention_tiles.cuh, and the row-wise kernels of
// kernels/attention_rowwise.cuh) uses nothing of CUDA but this file, so it also
// compiles for the host: tests/test_attention_emulated.cpp defines its own model of every
// function here (and CST_FLASH_DEVICE, bf16) and runs the tiles against the CPU reference. A
// classic include guard (not #pragma once) lets that model stand in for this file.
#ifndef CST_ATTENTION_PRIMITIVES_CUH
#define CST_ATTENTION_PRIMITIVES_CUH

#include <cuda_bf16.h>
#include <cstdint>

// Every function of the tile code: a device function, inlined into its kernel.
#define CST_FLASH_DEVICE __device__ __forceinline__

namespace cst::cuda::flash {

using bf16 = __nv_bfloat16;

CST_FLASH_DEVICE uint32_t shared_address(const void* pointer) {
  return uint32_t(__cvta_generic_to_shared(pointer));
}

// Lane l passes the address of one 16-byte row: rows of tile t come from lanes 8t..8t+7.
CST_FLASH_DEVICE void ldmatrix_x4(uint32_t (&fragment)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row_address)));
}

CST_FLASH_DEVICE void ldmatrix_x4_transposed(uint32_t (&fragment)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row_address)));
}

CST_FLASH_DEVICE void mma_bf16_16x8x16(float (&accumulator)[4], const uint32_t (&a)[4],
                                       uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(accumulator[0]), "+f"(accumulator[1]), "+f"(accumulator[2]), "+f"(accumulator[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (rows past a sequence's end),
// so the tile in shared memory never holds stale data. The source must be a readable address
// even when not valid; callers pass the tensor's base then. cp.async takes a .global address,
// hence the conversion from the generic pointer.
CST_FLASH_DEVICE void copy_async_16(void* shared_destination, const void* global_source,
                                    bool valid) {
  int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :
               : "r"(shared_address(shared_destination)),
                 "l"(__cvta_generic_to_global(global_source)), "r"(source_bytes));
}

// Closes the group of copies this thread has started since the last commit.
CST_FLASH_DEVICE void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `pending` of this thread's committed groups are still in flight. The
// copies become visible to the other threads only after a block_barrier that follows.
template <int pending>
CST_FLASH_DEVICE void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" : : "n"(pending) : "memory");
}

CST_FLASH_DEVICE void block_barrier() { __syncthreads(); }

// The value of lane (this lane ^ lane_mask); every lane of the warp must take part.
CST_FLASH_DEVICE float shuffle_xor(float value, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, value, lane_mask);
}

// Two floats rounded to bf16 (to nearest even) and packed as one 32-bit mma operand register,
// `low` in the low half.
CST_FLASH_DEVICE uint32_t pack_bf16x2(float low, float high) {
  __nv_bfloat162 packed = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<uint32_t*>(&packed);
}

// One 32-bit store of two packed bf16 (from pack_bf16x2) to an even element of global memory.
CST_FLASH_DEVICE void store_bf16x2(bf16* destination, uint32_t packed) {
  *reinterpret_cast<uint32_t*>(destination) = packed;
}

// kCount (2 or 4) consecutive bf16 of global memory as floats, by one 4- or 8-byte load: source
// is aligned to that size. A bf16 is the high half of the f32 with the same bits.
template <int kCount>
CST_FLASH_DEVICE void load_bf16_values(const bf16* source, float (&values)[kCount]) {
  static_assert(kCount == 2 || kCount == 4, "one 4- or 8-byte load");
  uint32_t words[kCount / 2];
  if constexpr (kCount == 2) {
    words[0] = *reinterpret_cast<const uint32_t*>(source);
  } else {
    const uint2 pair = *reinterpret_cast<const uint2*>(source);
    words[0] = pair.x;
    words[1] = pair.y;
  }
  for (int w = 0; w < kCount / 2; ++w) {
    values[2 * w] = __uint_as_float(words[w] << 16);
    values[2 * w + 1] = __uint_as_float(words[w] & 0xffff0000u);
  }
}

// One bf16 element, rounded to nearest even, stored to global memory.
CST_FLASH_DEVICE void store_bf16(bf16* destination, float value) { *destination = __float2bfloat16_rn(value); }

// 2^x from the special function unit alone: ex2.approx.ftz.f32, 2^-inf = 0. exp2f (at most 2 ulp
// off, CUDA's math documentation) compiles to this same instruction plus, per call, a range
// check and two multiplies that only matter for results below 2^-126, which .ftz flushes to 0:
// weights no softmax sum can notice. The softmax calls it for every score.
CST_FLASH_DEVICE float fast_exp2(float x) {
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(result) : "f"(x));
  return result;
}

// Two packed bf16 stored to an even element of shared memory. Another warp may read them only
// after a block_barrier.
CST_FLASH_DEVICE void store_shared_bf16x2(bf16* shared_destination, uint32_t packed) {
  *reinterpret_cast<uint32_t*>(shared_destination) = packed;
}

// Two f32 stored to an 8-byte-aligned address of shared memory.
CST_FLASH_DEVICE void store_shared_f32x2(float* shared_destination, float low, float high) {
  *reinterpret_cast<float2*>(shared_destination) = make_float2(low, high);
}

// Four f32 from a 16-byte-aligned address of shared memory, by one 16-byte load.
CST_FLASH_DEVICE void load_shared_f32x4(const float* shared_source, float (&values)[4]) {
  const float4 loaded = *reinterpret_cast<const float4*>(shared_source);
  values[0] = loaded.x;
  values[1] = loaded.y;
  values[2] = loaded.z;
  values[3] = loaded.w;
}

// Four f32 of global memory (16-byte aligned) that other blocks write while this kernel runs:
// ld.global.cg and st.global.cg go to L2, which every SM shares, never to this SM's L1, which
// would not see the other SMs' stores.
CST_FLASH_DEVICE void load_f32x4_l2(const float* source, float (&values)[4]) {
  const float4 loaded = __ldcg(reinterpret_cast<const float4*>(source));
  values[0] = loaded.x;
  values[1] = loaded.y;
  values[2] = loaded.z;
  values[3] = loaded.w;
}

CST_FLASH_DEVICE void store_f32x4_l2(float* destination, const float (&values)[4]) {
  __stcg(reinterpret_cast<float4*>(destination), make_float4(values[0], values[1], values[2], values[3]));
}

// Adds four f32 to 16-byte-aligned global memory; the results are not used, so these compile to
// reductions (RED), which do not wait for L2. sm_90 adds the four in one vector reduction. Like
// every f32 reduction (PTX ISA, "red"), they flush subnormal inputs and sums to zero.
CST_FLASH_DEVICE void atomic_add_f32x4(float* destination, const float (&values)[4]) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(destination),
            make_float4(values[0], values[1], values[2], values[3]));
#else
  for (int i = 0; i < 4; ++i) atomicAdd(destination + i, values[i]);
#endif
}

// The counter's value before adding 1 to it: blocks that call it get 0, 1, 2, ... in the order
// they call it.
CST_FLASH_DEVICE int take_ticket(int* counter) { return atomicAdd(counter, 1); }

// Blocks take turns through a counter in global memory: a block waits until *turn == value,
// does its work, and passes the turn on (adds 1). Thread 0 polls with acquire loads, and the
// barrier that follows lets every thread of the block go on: each then sees what the blocks
// before it wrote before passing the turn. Every thread of the block calls both.
// A turn that has not come after 2^32 cycles (over 2 s) never will: the kernel traps, and the
// launch fails with an error instead of hanging the GPU.
CST_FLASH_DEVICE void wait_for_turn(const int* turn, int value, int thread) {
  if (thread == 0) {
    const long long start = clock64();
    int seen;
    for (;;) {
      asm volatile("ld.acquire.gpu.b32 %0, [%1];\n" : "=r"(seen) : "l"(turn) : "memory");
      if (seen == value) break;
      if (clock64() - start > (1ll << 32)) __trap();
    }
  }
  __syncthreads();
}

// The barrier orders every thread's writes before thread 0's release add, which the next
// block's acquire load then sees together with them.
CST_FLASH_DEVICE void pass_turn(int* turn, int thread) {
  __syncthreads();
  if (thread == 0) asm volatile("red.release.gpu.add.s32 [%0], 1;\n" : : "l"(turn) : "memory");
}

// ---- Warpgroup matrix multiplies (sm_90a; PTX ISA, "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate Instructions") ----
//
// A warpgroup is four consecutive warps whose first is a multiple of four. wgmma.mma_async
// computes D (64 x N, f32) = A (64 x 16) * B (16 x N) + D for the whole warpgroup: warp w of the
// group holds rows 16w .. 16w+15 of D as N/8 mma C fragments (d[n][e] is element e of n8 tile n,
// the layout mma_bf16_16x8x16 gives) and, when A comes from registers, rows 16w .. of A as one
// mma A fragment. Operands in shared memory are named by a 64-bit descriptor (start address,
// the byte offsets between 8-row groups and between 64-column panels, the swizzle:
// kernels/attention_warpgroup.cuh builds them), and read by the tensor cores themselves, no
// ldmatrix. The multiply runs asynchronously:
//   warpgroup_fence      before the first multiply of a sequence, once the thread's own
//                        instructions have written the accumulator or A registers
//   warpgroup_commit     closes the group of multiplies issued since the last commit
//   warpgroup_wait<n>    waits until at most n groups are pending: only then may the accumulator
//                        be read, or the shared memory the multiplies read be written
//   async_proxy_fence    the multiplies read shared memory through the "async proxy": what this
//                        thread wrote through ordinary stores or cp.async becomes visible to them
//                        after this fence, then a barrier for the other threads' writes
//   hold_registers       no instruction: tells the compiler the registers are read and written
//                        there. To the compiler a multiply's asm statement reads its operands and
//                        writes its accumulators where it stands; the tensor cores do so until
//                        the wait. Held right after the wait, the A operand stays live until
//                        then (its registers are not reused for other values meanwhile) and the
//                        accumulators are read no earlier. Otherwise ptxas, which does see the
//                        true lifetimes, keeps the code correct by serializing the multiplies.
// The instructions exist only in code compiled for sm_90a; elsewhere these functions trap, and
// the host launches the kernels that use them only on a device of compute capability 9.0.

// Four f32 accumulators of one n8 tile, as asm read-write operands.
#define CST_WGMMA_TILE(d, n) "+f"(d[n][0]), "+f"(d[n][1]), "+f"(d[n][2]), "+f"(d[n][3])
#define CST_WGMMA_EIGHT_TILES(d, n)                                                        \
  CST_WGMMA_TILE(d, n), CST_WGMMA_TILE(d, n + 1), CST_WGMMA_TILE(d, n + 2),                \
      CST_WGMMA_TILE(d, n + 3), CST_WGMMA_TILE(d, n + 4), CST_WGMMA_TILE(d, n + 5),        \
      CST_WGMMA_TILE(d, n + 6), CST_WGMMA_TILE(d, n + 7)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CST_HAS_WGMMA 1
#else
#define CST_HAS_WGMMA 0
#endif

CST_FLASH_DEVICE void warpgroup_fence() {
#if CST_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

CST_FLASH_DEVICE void warpgroup_commit() {
#if CST_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

template <int pending>
CST_FLASH_DEVICE void warpgroup_wait() {
#if CST_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" : : "n"(pending) : "memory");
#else
  __trap();
#endif
}

template <int kRows, int kColumns>
CST_FLASH_DEVICE void hold_registers(float (&values)[kRows][kColumns]) {
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kColumns; ++c) asm volatile("" : "+f"(values[r][c])::"memory");
}

template <int kRows, int kColumns>
CST_FLASH_DEVICE void hold_registers(uint32_t (&values)[kRows][kColumns]) {
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kColumns; ++c) asm volatile("" : "+r"(values[r][c])::"memory");
}

CST_FLASH_DEVICE void async_proxy_fence() {
#if CST_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// d (64 x 64) = A (64 x 16, shared, K-major: rows of A along the descriptor's 8-row groups)
// times B (16 x 64, shared, K-major: B's columns are the rows of a row-major tile), plus d when
// `accumulate`.
CST_FLASH_DEVICE void warpgroup_multiply_shared(float (&d)[8][4], uint64_t a_descriptor,
                                                uint64_t b_descriptor, bool accumulate) {
#if CST_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, accumulate, 1, 1, 0, 0;\n}\n"
      : CST_WGMMA_EIGHT_TILES(d, 0)
      : "l"(a_descriptor), "l"(b_descriptor), "r"(int(accumulate)));
#else
  __trap();
#endif
}

// d (64 x kColumns) += A (64 x 16, this warp's rows as one mma A fragment) times B (16 x
// kColumns, shared, MN-major: the rows of a row-major tile are B's rows), kColumns 64 or 128.
template <int kColumns>
CST_FLASH_DEVICE void warpgroup_multiply_registers(float (&d)[kColumns / 8][4],
                                                   const uint32_t (&a)[4], uint64_t b_descriptor) {
  static_assert(kColumns == 64 || kColumns == 128, "the head dims of the flash kernels");
#if CST_HAS_WGMMA
  if constexpr (kColumns == 64) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
        : CST_WGMMA_EIGHT_TILES(d, 0)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor));
  } else {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
        "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "
        "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
        : CST_WGMMA_EIGHT_TILES(d, 0), CST_WGMMA_EIGHT_TILES(d, 8)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor));
  }
#else
  __trap();
#endif
}

#undef CST_WGMMA_TILE
#undef CST_WGMMA_EIGHT_TILES
#undef CST_HAS_WGMMA

}  // namespace cst::cuda::flash

#endif  // CST_ATTENTION_PRIMITIVES_CUH
