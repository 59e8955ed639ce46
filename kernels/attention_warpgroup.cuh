// The flash attention forward for Hopper (sm_90a): the same online softmax as forward_block
// (kernels/attention_tiles.cuh), with its two matrix products on warpgroup multiplies (wgmma,
// kernels/attention_primitives.cuh) instead of per-warp mma.sync.
//
// A block has two warpgroups (8 warps, 256 threads) and a 128-query tile: warpgroup g owns the
// 64 queries from query0 + 64 g, and warp w of it rows 16 w .. 16 w + 15 of those, as in the
// 64-row tiles of the other kernels. Both warpgroups stream the same K and V tiles through two
// shared-memory buffers. Per 64-key tile, each warpgroup
//   S  (64 x 64)  = Q (64 x D) K^T      D/16 multiplies m64n64k16, both operands read by the
//                                       tensor cores from shared memory (Q's and K's rows are
//                                       both along D: "K-major")
//   online softmax of S in registers     exactly the code of the other forward kernels: the
//                                       accumulator of a warpgroup multiply holds each warp's
//                                       16 rows in the layout of mma C fragments
//   O  (64 x D)  += P (64 x 64) V        4 multiplies m64nDk16, P from registers (the C layout
//                                       of S packed to bf16 is the A fragment layout), V from
//                                       shared memory with its rows along the keys ("MN-major")
// Neither product touches ldmatrix, and one instruction does the work of 32 (S) or 64 (O, at
// D = 128) mma.sync, which leaves the issue slots to the softmax.
//
// The multiplies run asynchronously, and the loop keeps the tensor cores busy while the
// softmax runs (FlashAttention-3's overlap within a warpgroup): step i issues S_i = Q K_i^T and
// then O += P_{i-1} V_{i-1} with the previous step's weights, waits for S_i alone, runs the
// softmax of S_i while the second product is still going, and only then waits for it and scales
// O by the step's correction exp2(old max - new max). Summing P_{i-1} V_{i-1} into O before
// the rescale that follows it gives exactly the order of the other kernels' online softmax. So
// V is streamed one tile behind K: step i needs K_i and V_{i-1}, and the step after the last key
// tile does the last product alone.
//
// Shared memory: the two Q tiles, two K and two V buffers, each 64 rows in TileLayout::panels,
// the layout the multiplies read with the 128-byte swizzle. That swizzle XORs bits 4-6 of each
// shared address with bits 7-9, so every tile starts on a 1024-byte boundary: the block aligns
// the start of its dynamic shared memory itself and asks for 1 KiB more.
#pragma once
#include <cstdint>

#include "kernels/attention_tiles.cuh"

namespace cst::cuda::flash {

constexpr int kWarpgroupThreads = 128;  // four warps
constexpr int kForwardWarpgroups = 2;
constexpr int kWarpgroupForwardThreads = kForwardWarpgroups * kWarpgroupThreads;
constexpr int kSwizzleAtomBytes = 1024;  // 8 rows of 128 bytes: the pattern the swizzle repeats

// ---- operand descriptors (PTX ISA, "Matrix Descriptor Format") ----
//
// Bits 0-13: the start address, 16-29: the leading byte offset, 32-45: the stride byte offset,
// each in 16-byte units; bits 62-63: the swizzle (1 = 128 bytes). In the canonical 128-byte
// swizzle layouts (PTX ISA, "Canonical Layouts") eight rows of 128 bytes form one repeating
// atom; the stride byte offset is the distance between the atoms of consecutive 8-row groups
// (1024 bytes in a panel). The leading byte offset is the distance between 64-column panels
// for an MN-major operand, and unused (encoded 1) for a K-major one.
CST_FLASH_DEVICE uint64_t descriptor_field(uint32_t bytes) { return uint64_t((bytes & 0x3FFFF) >> 4); }

constexpr uint32_t kRowGroupBytes = 8 * 128;
constexpr uint32_t kPanelBytes = kTileRows * 128;

// A tile whose rows run along the product's k dimension (Q and K in S = Q K^T).
CST_FLASH_DEVICE uint64_t k_major_descriptor(const bf16* tile) {
  return descriptor_field(shared_address(tile)) | uint64_t(1) << 16 |
         descriptor_field(kRowGroupBytes) << 32 | uint64_t(1) << 62;
}

// A tile whose rows are the product's k dimension (V in O = P V).
CST_FLASH_DEVICE uint64_t mn_major_descriptor(const bf16* tile) {
  return descriptor_field(shared_address(tile)) | descriptor_field(kPanelBytes) << 16 |
         descriptor_field(kRowGroupBytes) << 32 | uint64_t(1) << 62;
}

// The descriptor of the same layout starting `elements` further on: the start address is the
// low field, and no tile reaches past the 256 KiB it can address, so the add never carries.
CST_FLASH_DEVICE uint64_t advance_descriptor(uint64_t descriptor, int elements) {
  return descriptor + uint64_t(elements * int(sizeof(bf16)) / 16);
}

// The first of the block's tiles: its dynamic shared memory, moved up to the next 1024-byte
// boundary of the shared address space.
CST_FLASH_DEVICE bf16* align_to_swizzle_atom(char* shared) {
  const uint32_t misalignment = shared_address(shared) % kSwizzleAtomBytes;
  return reinterpret_cast<bf16*>(shared + (kSwizzleAtomBytes - misalignment) % kSwizzleAtomBytes);
}

template <int kHeadDim>
constexpr int forward_warpgroups_shared_bytes() {  // 2 Q + 2 K + 2 V, and room to align
  return (kForwardWarpgroups + 4) * kTileRows * kHeadDim * int(sizeof(bf16)) + kSwizzleAtomBytes;
}

// Every thread's copies have landed and are visible to the multiplies, which read shared
// memory through the async proxy: each thread's fence orders its own copies, the barrier all.
CST_FLASH_DEVICE void wait_for_tiles() {
  copy_async_wait<0>();
  async_proxy_fence();
  block_barrier();
}

// ---- the two products of a warpgroup, started asynchronously ----

// scores (64 x 64 over the warpgroup) = the Q tile times the K tile, transposed: step s reads
// columns 16 s .. 16 s + 15 of both, 32 bytes further into a 128-byte row of a panel. One group.
template <int kHeadDim>
CST_FLASH_DEVICE void start_scores(float (&scores)[kTileRows / 8][4], const bf16* q_tile,
                                   const bf16* k_tile) {
  const uint64_t q = k_major_descriptor(q_tile), k = k_major_descriptor(k_tile);
  for (int step = 0; step < kHeadDim / 16; ++step) {
    const int offset = tile_offset<kHeadDim, TileLayout::panels>(0, 16 * step);
    warpgroup_multiply_shared(scores, advance_descriptor(q, offset), advance_descriptor(k, offset),
                              step > 0);
  }
  warpgroup_commit();
}

// output (64 x D) += the weights (64 x 64, A fragments of the warp's rows) times the V tile:
// step s reads V's rows 16 s .. 16 s + 15. One group.
template <int kHeadDim>
CST_FLASH_DEVICE void start_accumulate_values(float (&output)[kHeadDim / 8][4],
                                              const uint32_t (&weights)[kTileRows / 16][4],
                                              const bf16* v_tile) {
  const uint64_t v = mn_major_descriptor(v_tile);
  for (int step = 0; step < kTileRows / 16; ++step)
    warpgroup_multiply_registers<kHeadDim>(
        output, weights[step],
        advance_descriptor(v, tile_offset<kHeadDim, TileLayout::panels>(16 * step, 0)));
  warpgroup_commit();
}

// ---- forward: one block per (128-query tile, query head, sequence) ----

template <int kHeadDim>
CST_FLASH_DEVICE void forward_warpgroups_block(const AttentionParams& p, char* shared,
                                               TileCoordinates at, int thread) {
  constexpr int kQueryRows = kForwardWarpgroups * kTileRows;
  constexpr int kTileElements = kTileRows * kHeadDim;
  const int lane = thread % 32, warpgroup = thread / kWarpgroupThreads;
  const int warp_row0 = thread % kWarpgroupThreads / 32 * 16;  // within the warpgroup's 64 rows
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int query0 = at.tile * kQueryRows;
  if (query0 >= seq_len) return;  // the whole block leaves together: tiles past a short sequence
  const int kv_head = at.head / (p.heads / p.kv_heads);
  const float scale_log2 = p.scale * kLog2e;

  bf16* q_tiles = align_to_swizzle_atom(shared);  // one per warpgroup
  const auto keys = key_tile_stream<kHeadDim, TileLayout::panels, kWarpgroupForwardThreads>(
      q_tiles + kForwardWarpgroups * kTileElements, query0, kQueryRows, seq_len, p.window);
  for (int g = 0; g < kForwardWarpgroups; ++g)
    load_tile_async<kHeadDim, TileLayout::panels, kWarpgroupForwardThreads>(
        q_tiles + g * kTileElements, p.q, p.heads,
        tile_source(seq_start, seq_len, query0 + g * kTileRows, at.head), thread);

  // This warpgroup's queries. It runs every key tile of the block's stream, those its queries
  // cannot see included (the causal diagonal's last tile for the first warpgroup): they add
  // exact zeros, as in the 128-row tiles of forward_block, and every branch around a multiply
  // stays the same for the whole block, which ptxas needs to keep the multiplies overlapping.
  const int group_query0 = query0 + warpgroup * kTileRows;
  const bf16* q_tile = q_tiles + warpgroup * kTileElements;
  float output[kHeadDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  // Step i (0 .. count) brings K_i and V_{i-1} (load_step(i), into buffer i % 2 and the other).
  auto load_step = [&](int i, int buffer) {
    if (i < keys.count()) keys.load_keys(i, buffer, p, seq_start, seq_len, kv_head, thread);
    if (i > 0) keys.load_values(i - 1, 1 - buffer, p, seq_start, seq_len, kv_head, thread);
  };
  // The softmax of S_i: masked, folded into the rows' statistics, packed as P_i.
  auto softmax_of_scores = [&](int i, float (&scores)[kTileRows / 8][4],
                               uint32_t (&weights)[kTileRows / 16][4], float (&correction)[2]) {
    const int key0 = keys.key0(i);
    if (!tiles_fully_visible(group_query0, key0, seq_len, p.window))
      for_each_hidden<kTileRows, false>(group_query0 + warp_row0, key0, seq_len, p.window, lane,
                                        [&](int n, int e) { scores[n][e] = -INFINITY; });
    softmax_weights<kTileRows>(scores, scale_log2, row_max, row_sum, correction);
    pack_a_fragments<kTileRows>(weights, scores);
  };

  // Step 0: S_0 alone (the output is still zero, nothing to rescale).
  load_step(0, 0);
  copy_async_commit();
  wait_for_tiles();
  load_step(1, 1);
  copy_async_commit();
  uint32_t weights[kTileRows / 16][4];  // P_{i-1}, read by its product until that is waited for
  {
    float scores[kTileRows / 8][4], correction[2];
    warpgroup_fence();
    start_scores<kHeadDim>(scores, q_tile, keys.k(0));
    warpgroup_wait<0>();
    hold_registers(scores);
    softmax_of_scores(0, scores, weights, correction);
  }
  wait_for_tiles();
  // Steps 1 .. count - 1: S_i beside P_{i-1} V_{i-1}; the softmax of S_i runs while the second
  // product does, so the step's weights go to other registers until it is done.
  for (int i = 1; i < keys.count(); ++i) {
    const int buffer = i % 2;
    load_step(i + 1, 1 - buffer);
    copy_async_commit();
    float scores[kTileRows / 8][4], correction[2];
    uint32_t next_weights[kTileRows / 16][4];
    warpgroup_fence();  // orders this thread's writes of output and weights before the products
    start_scores<kHeadDim>(scores, q_tile, keys.k(buffer));
    start_accumulate_values<kHeadDim>(output, weights, keys.v(1 - buffer));
    warpgroup_wait<1>();  // S_i; P_{i-1} V_{i-1} may still run
    hold_registers(scores);
    softmax_of_scores(i, scores, next_weights, correction);
    warpgroup_wait<0>();
    hold_registers(output);
    hold_registers(weights);
    rescale_output<kHeadDim>(output, correction);
    for (int step = 0; step < kTileRows / 16; ++step)
      for (int r = 0; r < 4; ++r) weights[step][r] = next_weights[step][r];
    wait_for_tiles();
  }
  // The last product alone.
  warpgroup_fence();
  start_accumulate_values<kHeadDim>(output, weights, keys.v((keys.count() - 1) % 2));
  warpgroup_wait<0>();
  hold_registers(output);

  store_forward_rows<kHeadDim>(p, at.head, tile_source(seq_start, seq_len, group_query0, at.head),
                               warp_row0, row_max, row_sum, output, lane);
}

}  // namespace cst::cuda::flash
