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

// ---- the two products of a warpgroup ----

// scores (64 x 64 over the warpgroup) = the Q tile times the K tile, transposed: step s reads
// columns 16 s .. 16 s + 15 of both, 32 bytes further into a 128-byte row of a panel.
template <int kHeadDim>
CST_FLASH_DEVICE void warpgroup_scores(float (&scores)[kTileRows / 8][4], const bf16* q_tile,
                                       const bf16* k_tile) {
  const uint64_t q = k_major_descriptor(q_tile), k = k_major_descriptor(k_tile);
  warpgroup_fence();
  for (int step = 0; step < kHeadDim / 16; ++step) {
    const int offset = tile_offset<kHeadDim, TileLayout::panels>(0, 16 * step);
    warpgroup_multiply_shared(scores, advance_descriptor(q, offset), advance_descriptor(k, offset),
                              step > 0);
  }
  warpgroup_commit();
  warpgroup_wait<0>();
}

// output (64 x D) += the weights (64 x 64, A fragments of the warp's rows) times the V tile:
// step s reads V's rows 16 s .. 16 s + 15.
template <int kHeadDim>
CST_FLASH_DEVICE void warpgroup_accumulate_values(float (&output)[kHeadDim / 8][4],
                                                  const uint32_t (&weights)[kTileRows / 16][4],
                                                  const bf16* v_tile) {
  const uint64_t v = mn_major_descriptor(v_tile);
  warpgroup_fence();
  for (int step = 0; step < kTileRows / 16; ++step)
    warpgroup_multiply_registers<kHeadDim>(
        output, weights[step],
        advance_descriptor(v, tile_offset<kHeadDim, TileLayout::panels>(16 * step, 0)));
  warpgroup_commit();
  warpgroup_wait<0>();
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
  auto load_key_tile = [&](int i, int buffer) {
    keys.load(i, buffer, p, seq_start, seq_len, kv_head, thread);
  };
  for (int g = 0; g < kForwardWarpgroups; ++g)
    load_tile_async<kHeadDim, TileLayout::panels, kWarpgroupForwardThreads>(
        q_tiles + g * kTileElements, p.q, p.heads,
        tile_source(seq_start, seq_len, query0 + g * kTileRows, at.head), thread);
  load_key_tile(0, 0);

  // This warpgroup's queries, and the key tiles (indices into the stream) with a key any of them
  // sees: the others would add exact zeros, so the warpgroup skips them (none when its queries
  // are all past the sequence's end).
  const int group_query0 = query0 + warpgroup * kTileRows;
  const bf16* q_tile = q_tiles + warpgroup * kTileElements;
  int group_first, group_last;
  key_tile_range(group_query0, kTileRows, seq_len, p.window, group_first, group_last);
  if (group_query0 >= seq_len) group_last = group_first - 1;

  float output[kHeadDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  double_buffered_loop<true>(keys.count(), load_key_tile, [&](int i, int buffer) {
    const int tile = keys.first_tile + i, key0 = keys.key0(i);
    if (tile < group_first || tile > group_last) return;  // the same for the whole warpgroup
    float scores[kTileRows / 8][4];
    warpgroup_scores<kHeadDim>(scores, q_tile, keys.k(buffer));
    if (!tiles_fully_visible(group_query0, key0, seq_len, p.window))
      for_each_hidden<kTileRows, false>(group_query0 + warp_row0, key0, seq_len, p.window, lane,
                                        [&](int n, int e) { scores[n][e] = -INFINITY; });
    online_softmax_step<kHeadDim, kTileRows>(scores, scale_log2, row_max, row_sum, output);
    uint32_t weights[kTileRows / 16][4];
    pack_a_fragments<kTileRows>(weights, scores);
    warpgroup_accumulate_values<kHeadDim>(output, weights, keys.v(buffer));
  });

  store_forward_rows<kHeadDim>(p, at.head, tile_source(seq_start, seq_len, group_query0, at.head),
                               warp_row0, row_max, row_sum, output, lane);
}

}  // namespace cst::cuda::flash
