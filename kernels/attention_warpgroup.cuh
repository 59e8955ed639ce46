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
constexpr int kQueryTileWarpgroups = 2;  // per 128-query tile (the forward, the dQ pass)
constexpr int kQueryTileThreads = kQueryTileWarpgroups * kWarpgroupThreads;
constexpr int kSwizzleAtomBytes = 1024;  // 8 rows of 128 bytes: the pattern the swizzle repeats

// ---- operand descriptors (PTX ISA, "Matrix Descriptor Format") ----
//
// Bits 0-13: the start address, 16-29: the leading byte offset, 32-45: the stride byte offset,
// each in 16-byte units; bits 62-63: the swizzle (1 = 128 bytes). In the canonical 128-byte
// swizzle layouts (PTX ISA, "Canonical Layouts") eight rows of 128 bytes form one repeating
// atom; the stride byte offset is the distance between the atoms of consecutive 8-row groups
// (1024 bytes in a panel). The leading byte offset is the distance between 64-column panels
// for an MN-major operand, and unused (encoded 1) for a K-major one.
CST_FLASH_DEVICE uint64_t descriptor_field(uint32_t bytes) {
  return uint64_t((bytes & 0x3FFFF) >> 4);
}

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
  return (kQueryTileWarpgroups + 4) * kTileRows * kHeadDim * int(sizeof(bf16)) + kSwizzleAtomBytes;
}

// Every thread's copies have landed and are visible to the multiplies, which read shared
// memory through the async proxy: each thread's fence orders its own copies, the barrier all.
CST_FLASH_DEVICE void wait_for_tiles() {
  copy_async_wait<0>();
  async_proxy_fence();
  block_barrier();
}

// ---- the two products of a warpgroup, started asynchronously ----

// result (64 x 64 over the warpgroup) = the rows of `left` times the rows of `right`, transposed
// (S = Q K^T, dP = dO V^T): step s reads columns 16 s .. 16 s + 15 of both, 32 bytes further
// into a 128-byte row of a panel. One group.
template <int kHeadDim>
CST_FLASH_DEVICE void start_rows_times_rows(float (&result)[kTileRows / 8][4], const bf16* left,
                                            const bf16* right) {
  const uint64_t a = k_major_descriptor(left), b = k_major_descriptor(right);
  for (int step = 0; step < kHeadDim / 16; ++step) {
    const int offset = tile_offset<kHeadDim, TileLayout::panels>(0, 16 * step);
    warpgroup_multiply_shared(result, advance_descriptor(a, offset), advance_descriptor(b, offset),
                              step > 0);
  }
  warpgroup_commit();
}

// accumulator (64 x D) += the weights (64 x 64, A fragments of the warp's rows) times the tile
// (O += P V, dQ += dS K): step s reads the tile's rows 16 s .. 16 s + 15. One group.
template <int kHeadDim>
CST_FLASH_DEVICE void start_accumulate_weights_times_tile(
    float (&accumulator)[kHeadDim / 8][4], const uint32_t (&weights)[kTileRows / 16][4],
    const bf16* tile) {
  const uint64_t b = mn_major_descriptor(tile);
  for (int step = 0; step < kTileRows / 16; ++step)
    warpgroup_multiply_registers<kHeadDim>(
        accumulator, weights[step],
        advance_descriptor(b, tile_offset<kHeadDim, TileLayout::panels>(16 * step, 0)));
  warpgroup_commit();
}

// The next step's A fragments take the place of this step's, once its product is waited for.
CST_FLASH_DEVICE void take_fragments(uint32_t (&fragments)[kTileRows / 16][4],
                                     const uint32_t (&next)[kTileRows / 16][4]) {
  for (int step = 0; step < kTileRows / 16; ++step)
    for (int r = 0; r < 4; ++r) fragments[step][r] = next[step][r];
}

// The tiles of a 128-query tile, one per warpgroup, from tensor `tensor` (Q or dO).
template <int kHeadDim>
CST_FLASH_DEVICE void load_query_tiles(bf16* tiles, const bf16* tensor, int heads_in_tensor,
                                       int seq_start, int seq_len, int query0, int head,
                                       int thread) {
  for (int g = 0; g < kQueryTileWarpgroups; ++g)
    load_tile_async<kHeadDim, TileLayout::panels, kQueryTileThreads>(
        tiles + g * kTileRows * kHeadDim, tensor, heads_in_tensor,
        tile_source(seq_start, seq_len, query0 + g * kTileRows, head), thread);
}

// Where a block of 128-query tiles works: its sequence, its first query (a tile past a short
// sequence's end has nothing to do) and the key/value head of its query head.
struct QueryTileBlock {
  int seq_start, seq_len, query0, kv_head;
};

CST_FLASH_DEVICE QueryTileBlock query_tile_block(const AttentionParams& p, TileCoordinates at,
                                                 int query_rows) {
  const int seq_start = p.cu_seqlens[at.sequence];
  return {seq_start, p.cu_seqlens[at.sequence + 1] - seq_start, at.tile * query_rows,
          at.head / (p.heads / p.kv_heads)};
}

// A thread of such a block: its lane, its warpgroup, and its warp's first row within the
// warpgroup's 64.
struct WarpgroupThread {
  int lane, warpgroup, warp_row0;
};

CST_FLASH_DEVICE WarpgroupThread warpgroup_thread(int thread) {
  return {thread % 32, thread / kWarpgroupThreads, thread % kWarpgroupThreads / 32 * 16};
}

// ---- forward: one block per (128-query tile, query head, sequence) ----

template <int kHeadDim>
CST_FLASH_DEVICE void forward_warpgroups_block(const AttentionParams& p, char* shared,
                                               TileCoordinates at, int thread) {
  constexpr int kQueryRows = kQueryTileWarpgroups * kTileRows;
  constexpr int kTileElements = kTileRows * kHeadDim;
  const WarpgroupThread me = warpgroup_thread(thread);
  const int lane = me.lane, warpgroup = me.warpgroup, warp_row0 = me.warp_row0;
  const QueryTileBlock block = query_tile_block(p, at, kQueryRows);
  if (block.query0 >= block.seq_len) return;  // the whole block leaves together
  const float scale_log2 = p.scale * kLog2e;

  bf16* q_tiles = align_to_swizzle_atom(shared);  // one per warpgroup
  const auto keys = key_tile_stream<kHeadDim, TileLayout::panels, kQueryTileThreads>(
      q_tiles + kQueryTileWarpgroups * kTileElements, block.query0, kQueryRows, block.seq_len,
      p.window);
  load_query_tiles<kHeadDim>(q_tiles, p.q, p.heads, block.seq_start, block.seq_len, block.query0,
                             at.head, thread);

  // This warpgroup's queries. It runs every key tile of the block's stream, those its queries
  // cannot see included (the causal diagonal's last tile for the first warpgroup): they add
  // exact zeros, as in the 128-row tiles of forward_block, and every branch around a multiply
  // stays the same for the whole block, which ptxas needs to keep the multiplies overlapping.
  const int group_query0 = block.query0 + warpgroup * kTileRows;
  const bf16* q_tile = q_tiles + warpgroup * kTileElements;
  float output[kHeadDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  // Step i (0 .. count) brings K_i and V_{i-1} (load_step(i), into buffer i % 2 and the other).
  auto load_step = [&](int i, int buffer) {
    if (i < keys.count())
      keys.load_keys(i, buffer, p, block.seq_start, block.seq_len, block.kv_head, thread);
    if (i > 0)
      keys.load_values(i - 1, 1 - buffer, p, block.seq_start, block.seq_len, block.kv_head, thread);
  };
  // The softmax of S_i: masked, folded into the rows' statistics, packed as P_i.
  auto softmax_of_scores = [&](int i, float (&scores)[kTileRows / 8][4],
                               uint32_t (&weights)[kTileRows / 16][4], float (&correction)[2]) {
    const int key0 = keys.key0(i);
    if (!tiles_fully_visible(group_query0, key0, block.seq_len, p.window))
      for_each_hidden<kTileRows, false>(group_query0 + warp_row0, key0, block.seq_len, p.window,
                                        lane, [&](int n, int e) { scores[n][e] = -INFINITY; });
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
    start_rows_times_rows<kHeadDim>(scores, q_tile, keys.k(0));
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
    start_rows_times_rows<kHeadDim>(scores, q_tile, keys.k(buffer));
    start_accumulate_weights_times_tile<kHeadDim>(output, weights, keys.v(1 - buffer));
    warpgroup_wait<1>();  // S_i; P_{i-1} V_{i-1} may still run
    hold_registers(scores);
    softmax_of_scores(i, scores, next_weights, correction);
    warpgroup_wait<0>();
    hold_registers(output);
    hold_registers(weights);
    rescale_output<kHeadDim>(output, correction);
    take_fragments(weights, next_weights);
    wait_for_tiles();
  }
  // The last product alone.
  warpgroup_fence();
  start_accumulate_weights_times_tile<kHeadDim>(output, weights, keys.v((keys.count() - 1) % 2));
  warpgroup_wait<0>();
  hold_registers(output);

  store_forward_rows<kHeadDim>(p, at.head,
                               tile_source(block.seq_start, block.seq_len, group_query0, at.head),
                               warp_row0, row_max, row_sum, output, lane);
}

// ---- dQ: one block per (128-query tile, query head, sequence) ----
//
// The dQ pass of AttentionBackward::recompute_dq on warpgroup multiplies, laid out like the
// forward: per 64-key tile, S = Q K^T and dP = dO V^T (both from shared memory), dS = P (dP - D)
// in registers with P recomputed from lse, and dQ += dS K (dS from registers, K read MN-major).
// Step i issues S_i and dP_i, then dQ += dS_{i-1} K_{i-1}, and forms dS_i while that runs; so
// K_{i-1} is still being read while K_{i+1} arrives: three K buffers, two of V (9 tiles + 1 KiB
// at D = 128: 145 KiB). dQ is a plain sum, nothing to rescale; its order over key tiles is the
// dQ kernel's, its grouping within a tile the tensor cores'.

template <int kHeadDim>
constexpr int backward_dq_warpgroups_shared_bytes() {  // 2 Q + 2 dO + 3 K + 2 V, and alignment
  return (2 * kQueryTileWarpgroups + 5) * kTileRows * kHeadDim * int(sizeof(bf16)) +
         kSwizzleAtomBytes;
}

template <int kHeadDim>
CST_FLASH_DEVICE void backward_dq_warpgroups_block(const AttentionParams& p, char* shared,
                                                   TileCoordinates at, int thread) {
  constexpr int kQueryRows = kQueryTileWarpgroups * kTileRows;
  constexpr int kTileElements = kTileRows * kHeadDim;
  constexpr int kKeyBuffers = 3;
  const WarpgroupThread me = warpgroup_thread(thread);
  const int lane = me.lane, warpgroup = me.warpgroup, warp_row0 = me.warp_row0;
  const QueryTileBlock block = query_tile_block(p, at, kQueryRows);
  if (block.query0 >= block.seq_len) return;  // the whole block leaves together
  const float scale_log2 = p.scale * kLog2e;

  bf16* q_tiles = align_to_swizzle_atom(shared);  // one per warpgroup, then the dO tiles
  bf16* dout_tiles = q_tiles + kQueryTileWarpgroups * kTileElements;
  const auto keys = key_tile_stream<kHeadDim, TileLayout::panels, kQueryTileThreads>(
      dout_tiles + kQueryTileWarpgroups * kTileElements, block.query0, kQueryRows, block.seq_len,
      p.window, kKeyBuffers);
  load_query_tiles<kHeadDim>(q_tiles, p.q, p.heads, block.seq_start, block.seq_len, block.query0,
                             at.head, thread);
  load_query_tiles<kHeadDim>(dout_tiles, p.dout, p.heads, block.seq_start, block.seq_len,
                             block.query0, at.head, thread);

  // Like the forward, each warpgroup runs every key tile of the block's range; the pairs its
  // queries cannot see get dS = 0.
  const int group_query0 = block.query0 + warpgroup * kTileRows;
  const bf16* q_tile = q_tiles + warpgroup * kTileElements;
  const bf16* dout_tile = dout_tiles + warpgroup * kTileElements;
  float row_lse_log2[2], row_dot[2];
  load_row_statistics(p, at.head, block.seq_start, block.seq_len, group_query0 + warp_row0, lane,
                      row_lse_log2, row_dot);
  // Step i brings K_i (buffer i % 3) and V_i (buffer i % 2).
  auto load_step = [&](int i) {
    if (i >= keys.count()) return;
    keys.load_keys(i, i % kKeyBuffers, p, block.seq_start, block.seq_len, block.kv_head, thread);
    keys.load_values(i, i % 2, p, block.seq_start, block.seq_len, block.kv_head, thread);
  };
  // S_i and dP_i: started (one group each), then, once waited for, turned into dS_i.
  auto start_products = [&](int i, float (&scores)[kTileRows / 8][4],
                            float (&dscores)[kTileRows / 8][4]) {
    start_rows_times_rows<kHeadDim>(scores, q_tile, keys.k(i % kKeyBuffers));
    start_rows_times_rows<kHeadDim>(dscores, dout_tile, keys.v(i % 2));
  };
  auto form_score_gradients = [&](int i, float (&scores)[kTileRows / 8][4],
                                  float (&dscores)[kTileRows / 8][4],
                                  uint32_t (&dscore_fragments)[kTileRows / 16][4]) {
    hold_registers(scores);
    hold_registers(dscores);
    const int key0 = keys.key0(i);
    score_gradient_fragments<kTileRows>(
        dscore_fragments, scores, dscores, scale_log2, row_lse_log2, row_dot,
        !tiles_fully_visible(group_query0, key0, block.seq_len, p.window), group_query0 + warp_row0,
        key0, block.seq_len, p.window, lane);
  };

  float dq[kHeadDim / 8][4] = {};
  uint32_t dscore_fragments[kTileRows / 16][4];  // dS_{i-1}, read by its product until waited for
  load_step(0);
  copy_async_commit();
  wait_for_tiles();
  load_step(1);
  copy_async_commit();
  {
    float scores[kTileRows / 8][4], dscores[kTileRows / 8][4];
    warpgroup_fence();
    start_products(0, scores, dscores);
    warpgroup_wait<0>();
    form_score_gradients(0, scores, dscores, dscore_fragments);
  }
  wait_for_tiles();
  for (int i = 1; i < keys.count(); ++i) {
    load_step(i + 1);
    copy_async_commit();
    float scores[kTileRows / 8][4], dscores[kTileRows / 8][4];
    uint32_t next_fragments[kTileRows / 16][4];
    warpgroup_fence();  // orders this thread's writes of dq and dS before the products
    start_products(i, scores, dscores);
    start_accumulate_weights_times_tile<kHeadDim>(dq, dscore_fragments,
                                                  keys.k((i - 1) % kKeyBuffers));
    warpgroup_wait<1>();  // S_i and dP_i; dQ += dS_{i-1} K_{i-1} may still run
    form_score_gradients(i, scores, dscores, next_fragments);
    warpgroup_wait<0>();
    hold_registers(dq);
    hold_registers(dscore_fragments);
    take_fragments(dscore_fragments, next_fragments);
    wait_for_tiles();
  }
  warpgroup_fence();
  start_accumulate_weights_times_tile<kHeadDim>(dq, dscore_fragments,
                                                keys.k((keys.count() - 1) % kKeyBuffers));
  warpgroup_wait<0>();
  hold_registers(dq);

  const float dq_factor[2] = {p.scale, p.scale};
  store_rows<kHeadDim>(p.dq, p.heads,
                       tile_source(block.seq_start, block.seq_len, group_query0, at.head),
                       warp_row0, dq, dq_factor, lane);
}

// ---- dK, dV: one block (one warpgroup) per (key tile, key/value head, sequence) ----
//
// The dK/dV pass on warpgroup multiplies, with the steps of backward_dkdv_block (query tiles
// from the last down, the group's query heads inside) and its 64-key tiles: the block is one
// warpgroup, warp w owning keys 16 w .. 16 w + 15. Per step
//   S^T = K Q^T, dP^T = V dO^T      from shared memory (K-major, both)
//   P^T, dS^T in registers           transposed_weight_fragments, as in backward_dkdv_block
//   dV += P^T dO, dK += dS^T Q       P^T, dS^T from registers, dO and Q read MN-major
// The dK and dV accumulators take 128 registers per thread at D = 128, which leaves no room to
// hold a step's weights while the next step's products run: the steps run one after the other,
// and two blocks per SM (128 threads, 98 KiB each) keep the tensor cores busy for each other.

template <int kHeadDim>
constexpr int backward_dkdv_warpgroup_shared_bytes() {  // K, V, 2 Q, 2 dO, 2 x 64 lse and D
  return 6 * kTileRows * kHeadDim * int(sizeof(bf16)) + 4 * kTileRows * int(sizeof(float)) +
         kSwizzleAtomBytes;
}

template <int kHeadDim>
CST_FLASH_DEVICE void backward_dkdv_warpgroup_block(const AttentionParams& p, char* shared,
                                                    TileCoordinates at, int thread) {
  constexpr int kTileElements = kTileRows * kHeadDim;
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int key0 = at.tile * kTileRows;
  if (key0 >= seq_len) return;
  const float scale_log2 = p.scale * kLog2e;

  bf16* k_tile = align_to_swizzle_atom(shared);
  bf16* v_tile = k_tile + kTileElements;
  bf16* query_dout_tiles = v_tile + kTileElements;  // buffer b: Q, then dO
  float* lse_log2 = reinterpret_cast<float*>(query_dout_tiles + 4 * kTileElements);  // [2][64]
  float* dots = lse_log2 + 2 * kTileRows;                                            // [2][64]
  auto q_tile_of = [&](int buffer) { return query_dout_tiles + 2 * buffer * kTileElements; };
  const QueryTileSteps steps = query_tile_steps(key0, seq_len, p.window, p.heads / p.kv_heads);
  auto load_step = [&](int i, int buffer) {
    const TileSource rows =
        tile_source(seq_start, seq_len, steps.query0(i), steps.head(i, at.head));
    load_tile_async<kHeadDim, TileLayout::panels>(q_tile_of(buffer), p.q, p.heads, rows, thread);
    load_tile_async<kHeadDim, TileLayout::panels>(q_tile_of(buffer) + kTileElements, p.dout,
                                                  p.heads, rows, thread);
    load_tile_statistics(p, rows.head, seq_start, seq_len, steps.query0(i), thread,
                         lse_log2 + buffer * kTileRows, dots + buffer * kTileRows);
  };
  const TileSource key_rows = tile_source(seq_start, seq_len, key0, at.head);
  load_tile_async<kHeadDim, TileLayout::panels>(k_tile, p.k, p.kv_heads, key_rows, thread);
  load_tile_async<kHeadDim, TileLayout::panels>(v_tile, p.v, p.kv_heads, key_rows, thread);
  load_step(0, 0);
  copy_async_commit();
  wait_for_tiles();

  float dk[kHeadDim / 8][4] = {};
  float dv[kHeadDim / 8][4] = {};
  for (int i = 0; i < steps.count(); ++i) {
    const int buffer = i % 2;
    if (i + 1 < steps.count()) load_step(i + 1, 1 - buffer);
    copy_async_commit();
    const bf16* q_tile = q_tile_of(buffer);
    const bf16* dout_tile = q_tile + kTileElements;
    float probabilities[kTileRows / 8][4];  // S^T, then P^T
    float dscores[kTileRows / 8][4];        // dP^T, then dS^T
    warpgroup_fence();
    start_rows_times_rows<kHeadDim>(probabilities, k_tile, q_tile);
    start_rows_times_rows<kHeadDim>(dscores, v_tile, dout_tile);
    warpgroup_wait<0>();
    hold_registers(probabilities);
    hold_registers(dscores);
    const int query0 = steps.query0(i);
    uint32_t probability_fragments[kTileRows / 16][4], dscore_fragments[kTileRows / 16][4];
    transposed_weight_fragments<kTileRows>(probability_fragments, dscore_fragments, probabilities,
                                           dscores, scale_log2, lse_log2 + buffer * kTileRows,
                                           dots + buffer * kTileRows, 0,
                                           !tiles_fully_visible(query0, key0, seq_len, p.window),
                                           key0 + warp_row0, query0, seq_len, p.window, lane);
    warpgroup_fence();  // orders the fragments' writes before the products that read them
    start_accumulate_weights_times_tile<kHeadDim>(dv, probability_fragments, dout_tile);
    start_accumulate_weights_times_tile<kHeadDim>(dk, dscore_fragments, q_tile);
    warpgroup_wait<0>();
    hold_registers(dv);
    hold_registers(dk);
    hold_registers(probability_fragments);
    hold_registers(dscore_fragments);
    wait_for_tiles();
  }

  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {1.0f, 1.0f};
  store_rows<kHeadDim>(p.dk, p.kv_heads, key_rows, warp_row0, dk, dk_factor, lane);
  store_rows<kHeadDim>(p.dv, p.kv_heads, key_rows, warp_row0, dv, dv_factor, lane);
}

}  // namespace cst::cuda::flash
