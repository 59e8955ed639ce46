// The per-block bodies of the flash attention kernels (see kernels/attention.h for the math and
// kernels/attention.cu for the launches). Every block has 4 warps and works on 64-row tiles; each
// warp owns 16 rows of the block's tile (the forward can also take 128-query tiles, 32 rows per
// warp), so the softmax statistics and the gradient rows it accumulates never leave the warp's
// registers and no two warps write the same output.
//
// Shared-memory tiles hold 64 rows x head_dim bf16. The 16-byte chunk c of row r is stored at
// chunk c ^ (r % 8): the eight row addresses an ldmatrix reads then fall in eight different bank
// groups instead of one. The Hopper forward (kernels/attention_warpgroup.cuh) stores its tiles
// as panels of 64 columns instead (TileLayout below), the layout its tensor cores read.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/attention_primitives.cuh"

namespace cst::cuda::flash {

constexpr int kTileRows = 64;                       // queries per query tile, keys per key tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct AttentionParams {
  const bf16* q = nullptr;          // (N, H, D)
  const bf16* k = nullptr;          // (N, KVH, D)
  const bf16* v = nullptr;          // (N, KVH, D)
  bf16* out = nullptr;              // (N, H, D)
  float* lse = nullptr;             // (H, N)
  const bf16* dout = nullptr;       // (N, H, D)
  float* dout_dot_out = nullptr;    // (H, N): D_i = do_i . o_i
  bf16* dq = nullptr;               // (N, H, D)
  float* dq_accumulator = nullptr;  // (N, H, D): dQ / scale summed by the dK/dV blocks
  bf16* dk = nullptr;               // (N, KVH, D)
  bf16* dv = nullptr;               // (N, KVH, D)
  const int32_t* cu_seqlens = nullptr;  // (S + 1) on the device
  int tokens = 0;                   // N
  int heads = 0;                    // H
  int kv_heads = 0;                 // KVH
  int window = 0;                   // 0 = plain causal
  float scale = 0;                  // 1 / sqrt(D)
  int dq_turns_per_head = 0;        // N / 64 + S
  int* dq_turns = nullptr;          // (H, N / 64 + S) + 1, zeroed: DqShare::ordered's counters
};
// The struct stays within 128 bytes: past that, nvcc stops keeping a kernel's copy of it in
// registers and reads every field through memory (the 128-query forward then ran 18% more
// instructions per key tile).
static_assert(sizeof(AttentionParams) <= 128, "kernel parameters nvcc keeps in registers");

// Which tile of which head of which sequence a block works on.
struct TileCoordinates {
  int tile = 0;
  int head = 0;  // query head (forward, dq) or key/value head (dk/dv)
  int sequence = 0;
};

// ---- reductions over lanes ----

// Over the four lanes (one quad) that share the rows of an mma C fragment.
CST_FLASH_DEVICE float quad_max(float value) {
  value = fmaxf(value, shuffle_xor(value, 1));
  return fmaxf(value, shuffle_xor(value, 2));
}

CST_FLASH_DEVICE float quad_sum(float value) {
  value += shuffle_xor(value, 1);
  return value + shuffle_xor(value, 2);
}

CST_FLASH_DEVICE float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += shuffle_xor(value, offset);
  return value;
}

// ---- masks and tile ranges (positions are within the sequence) ----

CST_FLASH_DEVICE bool key_visible(int query, int key, int seq_len, int window) {
  // key <= query < seq_len also keeps the key inside the sequence.
  return key <= query && query < seq_len && (window == 0 || key > query - window);
}

// True when every (query, key) pair of the two tiles is visible, so the mask can be skipped.
// Visibility is monotone in both positions, so checking the extreme pairs is enough.
CST_FLASH_DEVICE bool tiles_fully_visible(int query0, int key0, int seq_len, int window) {
  int query_last = query0 + kTileRows - 1, key_last = key0 + kTileRows - 1;
  return key_last <= query0 && query_last < seq_len &&
         (window == 0 || key0 > query_last - window);
}

// Key tiles that hold at least one key visible to some query of the tile [query0, query0 +
// query_rows).
CST_FLASH_DEVICE void key_tile_range(int query0, int query_rows, int seq_len, int window,
                                     int& first, int& last) {
  int first_key = window == 0 ? 0 : max(0, query0 - window + 1);
  int last_key = min(query0 + query_rows - 1, seq_len - 1);
  first = first_key / kTileRows;
  last = last_key / kTileRows;
}

// Query tiles that hold at least one query that sees some key of the tile [key0, key0 + 64).
CST_FLASH_DEVICE void query_tile_range(int key0, int seq_len, int window, int& first,
                                       int& last) {
  int last_query = seq_len - 1;
  if (window != 0) last_query = min(last_query, key0 + kTileRows - 1 + window - 1);
  first = key0 / kTileRows;
  last = last_query / kTileRows;
}

// ---- shared-memory tiles ----

// Element offset of (row, col) in a swizzled tile of kWidth columns (the head dim, or 64 for the
// backward's dS tile); col is a multiple of 8 (one 16-byte chunk).
template <int kWidth>
CST_FLASH_DEVICE int swizzled_offset(int row, int col) {
  const unsigned r = unsigned(row), c = unsigned(col);
  return int(r * kWidth + (((c / 8) ^ (r % 8)) * 8));
}

// The layout of a 64-row tile in shared memory. `rows`: row-major, each row's 16-byte chunks
// swizzled as above. `panels`: the columns split into panels of 64 (one for D = 64, where the
// two layouts are the same; two for D = 128), each panel 64 rows of 128 bytes with chunk c of
// row r at c ^ (r % 8): the canonical "128-byte swizzle" layout of the warpgroup multiplies
// (PTX ISA, "Shared Memory Matrix Layout"), which they read for either operand order, and
// conflict-free for 8-row accesses like the other.
enum class TileLayout { rows, panels };

template <int kWidth, TileLayout kLayout = TileLayout::rows>
CST_FLASH_DEVICE int tile_offset(int row, int col) {
  if constexpr (kLayout == TileLayout::rows) {
    return swizzled_offset<kWidth>(row, col);
  } else {
    const unsigned r = unsigned(row), c = unsigned(col);
    return int((c / 64) * (kTileRows * 64) + r * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8));
  }
}

// Where a tile's 64 rows come from: tokens [first_token, first_token + 64) of one head of a
// (N, heads, D) tensor, of which the first valid_rows belong to the sequence.
struct TileSource {
  int first_token = 0;
  int valid_rows = 0;
  int head = 0;
};

// The rows [row0, row0 + 64) (positions within the sequence) of one head.
CST_FLASH_DEVICE TileSource tile_source(int seq_start, int seq_len, int row0, int head) {
  return {seq_start + row0, seq_len - row0, head};
}

// Starts copying a tile into shared memory; rows at or past valid_rows are zero-filled. Thread t
// (of kBlockThreads) copies the 16-byte chunk t % (D / 8) of rows t / (D / 8), + kBlockThreads /
// (D / 8), ...: its column and its rows' swizzle stay the same from one row to the next, and its
// source advances by a fixed stride, so a row costs a pointer increment and a bounds check
// rather than a 64-bit offset computed afresh. An invalid row copies from the tensor's base,
// which is always readable.
template <int kHeadDim, TileLayout kLayout = TileLayout::rows, int kBlockThreads = kThreads>
CST_FLASH_DEVICE void load_tile_async(bf16* tile, const bf16* tensor, int heads_in_tensor,
                                      TileSource rows, int thread) {
  constexpr int kChunksPerRow = kHeadDim / 8;
  constexpr int kRowsPerPass = kBlockThreads / kChunksPerRow;
  const int first_row = thread / kChunksPerRow, col = (thread % kChunksPerRow) * 8;
  const int64_t pass_stride = int64_t(kRowsPerPass) * heads_in_tensor * kHeadDim;
  const bf16* source =
      tensor + (int64_t(rows.first_token + first_row) * heads_in_tensor + rows.head) * kHeadDim + col;
  for (int pass = 0; pass < kTileRows / kRowsPerPass; ++pass) {
    const int row = first_row + pass * kRowsPerPass;
    const bool valid = row < rows.valid_rows;
    copy_async_16(tile + tile_offset<kHeadDim, kLayout>(row, col), valid ? source : tensor, valid);
    source += pass_stride;
  }
}

// The two tiles every kernel streams through: K and V of a key tile, or Q and dO of a query
// tile (each pair shares its rows).
template <int kHeadDim>
CST_FLASH_DEVICE void load_key_value_tiles(bf16* k_tile, bf16* v_tile, const AttentionParams& p,
                                           TileSource rows, int thread) {
  load_tile_async<kHeadDim>(k_tile, p.k, p.kv_heads, rows, thread);
  load_tile_async<kHeadDim>(v_tile, p.v, p.kv_heads, rows, thread);
}

template <int kHeadDim>
CST_FLASH_DEVICE void load_query_dout_tiles(bf16* q_tile, bf16* dout_tile,
                                            const AttentionParams& p, TileSource rows,
                                            int thread) {
  load_tile_async<kHeadDim>(q_tile, p.q, p.heads, rows, thread);
  load_tile_async<kHeadDim>(dout_tile, p.dout, p.heads, rows, thread);
}

// The key tiles a query tile attends to, streamed through two shared-memory buffers of K and V
// (the forward and dQ kernels): the range its causal window reaches, and tile i of that range,
// loaded in kLayout by kBlockThreads threads.
template <int kHeadDim, TileLayout kLayout = TileLayout::rows, int kBlockThreads = kThreads>
struct KeyTileStream {
  static constexpr int kTileElements = kTileRows * kHeadDim;
  bf16* k_tiles;  // two buffers each (three of K in the Hopper dQ pass): compute on one, fill
  bf16* v_tiles;  // the other
  int first_tile, last_tile;

  CST_FLASH_DEVICE int count() const { return last_tile - first_tile + 1; }
  CST_FLASH_DEVICE int key0(int i) const { return (first_tile + i) * kTileRows; }
  CST_FLASH_DEVICE const bf16* k(int buffer) const { return k_tiles + buffer * kTileElements; }
  CST_FLASH_DEVICE const bf16* v(int buffer) const { return v_tiles + buffer * kTileElements; }
  // Starts the copies of tile i into a buffer.
  CST_FLASH_DEVICE void load(int i, int buffer, const AttentionParams& p, int seq_start, int seq_len,
                             int kv_head, int thread) const {
    load_keys(i, buffer, p, seq_start, seq_len, kv_head, thread);
    load_values(i, buffer, p, seq_start, seq_len, kv_head, thread);
  }
  // The same for K alone, or V alone (the Hopper forward streams V one tile behind K).
  CST_FLASH_DEVICE void load_keys(int i, int buffer, const AttentionParams& p, int seq_start,
                                  int seq_len, int kv_head, int thread) const {
    load_tile_async<kHeadDim, kLayout, kBlockThreads>(
        k_tiles + buffer * kTileElements, p.k, p.kv_heads,
        tile_source(seq_start, seq_len, key0(i), kv_head), thread);
  }
  CST_FLASH_DEVICE void load_values(int i, int buffer, const AttentionParams& p, int seq_start,
                                    int seq_len, int kv_head, int thread) const {
    load_tile_async<kHeadDim, kLayout, kBlockThreads>(
        v_tiles + buffer * kTileElements, p.v, p.kv_heads,
        tile_source(seq_start, seq_len, key0(i), kv_head), thread);
  }
};

// The stream of the query tile [query0, query0 + query_rows), its buffers at k_tiles (k_buffers
// K tiles, then two V tiles).
template <int kHeadDim, TileLayout kLayout = TileLayout::rows, int kBlockThreads = kThreads>
CST_FLASH_DEVICE KeyTileStream<kHeadDim, kLayout, kBlockThreads> key_tile_stream(
    bf16* k_tiles, int query0, int query_rows, int seq_len, int window, int k_buffers = 2) {
  using Stream = KeyTileStream<kHeadDim, kLayout, kBlockThreads>;
  Stream stream{k_tiles, k_tiles + k_buffers * Stream::kTileElements, 0, 0};
  key_tile_range(query0, query_rows, seq_len, window, stream.first_tile, stream.last_tile);
  return stream;
}

// The pipeline of every kernel: compute(i, buffer) for i = 0 .. count-1 with tile i in buffer
// i % 2, while the copies of tile i + 1 (started by load(i + 1, buffer)) fill the other buffer.
// The caller has started tile 0's copies, and any others it needs from the start.
template <class Load, class Compute>
CST_FLASH_DEVICE void double_buffered_loop(int count, Load load, Compute compute) {
  copy_async_commit();
  copy_async_wait<0>();
  block_barrier();
  for (int i = 0; i < count; ++i) {
    const bool prefetch = i + 1 < count;
    if (prefetch) {
      load(i + 1, (i + 1) % 2);  // the buffer every warp finished reading before the last barrier
      copy_async_commit();
    }
    compute(i, i % 2);
    if (prefetch) copy_async_wait<0>();
    block_barrier();  // tile i + 1 is in place for every warp, and nobody reads buffer i % 2
  }
}

// A fragment (16 rows x 16 cols at row0, col0) of a row-major tile.
template <int kHeadDim>
CST_FLASH_DEVICE void load_a_fragment(uint32_t (&a)[4], const bf16* tile, int row0, int col0,
                                      int lane) {
  ldmatrix_x4(a, tile + swizzled_offset<kHeadDim>(row0 + lane % 16, col0 + (lane / 16) * 8));
}

// The A fragment (16 rows x 16 cols at row0, col0) of the transpose of a row-major tile of
// width kWidth: the tile's rows col0..col0+15 are the fragment's columns.
template <int kWidth>
CST_FLASH_DEVICE void load_a_fragment_of_transpose(uint32_t (&a)[4], const bf16* tile, int row0,
                                                   int col0, int lane) {
  int tile_row = col0 + lane % 8 + (lane / 16) * 8, tile_col = row0 + ((lane / 8) % 2) * 8;
  ldmatrix_x4_transposed(a, tile + swizzled_offset<kWidth>(tile_row, tile_col));
}

// B fragments of (tile rows row0..row0+15)^T restricted to cols col0..col0+15: the tile's rows
// are the mma's n dimension. b[0], b[1] serve rows row0..+7; b[2], b[3] rows row0+8..+15.
template <int kHeadDim>
CST_FLASH_DEVICE void load_b_fragments_of_rows(uint32_t (&b)[4], const bf16* tile, int row0,
                                               int col0, int lane) {
  int row = row0 + lane % 8 + (lane / 16) * 8, col = col0 + ((lane / 8) % 2) * 8;
  ldmatrix_x4(b, tile + swizzled_offset<kHeadDim>(row, col));
}

// B fragments of the tile itself: rows row0..row0+15 are the mma's k dimension, cols col0..+15
// its n dimension. b[0], b[1] serve cols col0..+7; b[2], b[3] cols col0+8..+15.
template <int kHeadDim>
CST_FLASH_DEVICE void load_b_fragments_of_cols(uint32_t (&b)[4], const bf16* tile, int row0,
                                               int col0, int lane) {
  int row = row0 + lane % 8 + ((lane / 8) % 2) * 8, col = col0 + (lane / 16) * 8;
  ldmatrix_x4_transposed(b, tile + swizzled_offset<kHeadDim>(row, col));
}

// ---- warp-level products ----

// scores[r] (16 x kColumns) = rows [row0 + 64 r, row0 + 64 r + 16) of `left` times rows
// [right_row0, right_row0 + kColumns) of `right`, transposed, for each of kRowBlocks row blocks:
// both tiles are row-major over the head dimension. Each B fragment of `right` is loaded once and
// serves every row block, so more row blocks per warp mean fewer shared-memory reads per FLOP.
template <int kHeadDim, int kColumns, int kRowBlocks>
CST_FLASH_DEVICE void multiply_row_blocks_by_rows(float (&scores)[kRowBlocks][kColumns / 8][4],
                                                  const bf16* left, int row0, const bf16* right,
                                                  int right_row0, int lane) {
  for (int r = 0; r < kRowBlocks; ++r)
    for (int n = 0; n < kColumns / 8; ++n)
      for (int e = 0; e < 4; ++e) scores[r][n][e] = 0.0f;
  for (int step = 0; step < kHeadDim / 16; ++step) {
    uint32_t a[kRowBlocks][4];
    for (int r = 0; r < kRowBlocks; ++r)
      load_a_fragment<kHeadDim>(a[r], left, row0 + r * kTileRows, step * 16, lane);
    for (int block16 = 0; block16 < kColumns / 16; ++block16) {
      uint32_t b[4];
      load_b_fragments_of_rows<kHeadDim>(b, right, right_row0 + block16 * 16, step * 16, lane);
      for (int r = 0; r < kRowBlocks; ++r) {
        mma_bf16_16x8x16(scores[r][2 * block16], a[r], b[0], b[1]);
        mma_bf16_16x8x16(scores[r][2 * block16 + 1], a[r], b[2], b[3]);
      }
    }
  }
}

// The same for one row block: scores (16 x kColumns) from rows [row0, row0 + 16) of `left`.
template <int kHeadDim, int kColumns>
CST_FLASH_DEVICE void multiply_rows_by_rows(float (&scores)[kColumns / 8][4], const bf16* left,
                                            int row0, const bf16* right, int right_row0,
                                            int lane) {
  multiply_row_blocks_by_rows<kHeadDim, kColumns, 1>(
      reinterpret_cast<float (&)[1][kColumns / 8][4]>(scores), left, row0, right, right_row0, lane);
}

// The A fragments (k16 steps) of a warp's 16 x kColumns tile held in C layout, rounded to bf16:
// the C fragments of two adjacent n8 tiles are exactly the A fragment of one k16 step, so a
// product's result feeds the next product without going through shared memory. Packing as soon
// as the f32 values are final halves the registers they hold.
template <int kColumns>
CST_FLASH_DEVICE void pack_a_fragments(uint32_t (&a)[kColumns / 16][4],
                                       const float (&c)[kColumns / 8][4]) {
  for (int step = 0; step < kColumns / 16; ++step) {
    const float* low = c[2 * step];
    const float* high = c[2 * step + 1];
    a[step][0] = pack_bf16x2(low[0], low[1]);
    a[step][1] = pack_bf16x2(low[2], low[3]);
    a[step][2] = pack_bf16x2(high[0], high[1]);
    a[step][3] = pack_bf16x2(high[2], high[3]);
  }
}

// accumulator[r] (16 x D) += weights[r] (16 x kRows, A fragments from pack_a_fragments) times
// rows [row0, row0 + kRows) of the tile `right` (row-major, 64 x D), for each of kRowBlocks row
// blocks; each B fragment is loaded once for all of them.
template <int kHeadDim, int kRows, int kRowBlocks>
CST_FLASH_DEVICE void accumulate_row_blocks_times_tile(
    float (&accumulator)[kRowBlocks][kHeadDim / 8][4],
    const uint32_t (&weights)[kRowBlocks][kRows / 16][4], const bf16* right, int row0, int lane) {
  for (int step = 0; step < kRows / 16; ++step)
    for (int col16 = 0; col16 < kHeadDim / 16; ++col16) {
      uint32_t b[4];
      load_b_fragments_of_cols<kHeadDim>(b, right, row0 + step * 16, col16 * 16, lane);
      for (int r = 0; r < kRowBlocks; ++r) {
        mma_bf16_16x8x16(accumulator[r][2 * col16], weights[r][step], b[0], b[1]);
        mma_bf16_16x8x16(accumulator[r][2 * col16 + 1], weights[r][step], b[2], b[3]);
      }
    }
}

// The same for one row block.
template <int kHeadDim, int kRows>
CST_FLASH_DEVICE void accumulate_weights_times_tile(float (&accumulator)[kHeadDim / 8][4],
                                                    const uint32_t (&weights)[kRows / 16][4],
                                                    const bf16* right, int row0, int lane) {
  accumulate_row_blocks_times_tile<kHeadDim, kRows, 1>(
      reinterpret_cast<float (&)[1][kHeadDim / 8][4]>(accumulator),
      reinterpret_cast<const uint32_t (&)[1][kRows / 16][4]>(weights), right, row0, lane);
}

// Element e of n8 tile n of a C fragment sits at (row, col) of the 16-row warp tile.
CST_FLASH_DEVICE int fragment_row(int lane, int e) { return lane / 4 + (e / 2) * 8; }
CST_FLASH_DEVICE int fragment_col(int lane, int n, int e) {
  return n * 8 + (lane % 4) * 2 + (e % 2);
}

// Calls hide(n, e) for every element (n8 tile n, element e) of a warp's 16 x kColumns C-layout
// tile whose (query, key) pair the mask hides. Rows are the positions row0.., columns column0..;
// rows are queries and columns keys, or the other way round with kRowsAreKeys (the dK/dV
// block's transposed tiles). Only tiles that tiles_fully_visible rejects need it: the fully
// visible tiles, most of a long sequence's, then spend no instruction on the mask.
template <int kColumns, bool kRowsAreKeys, class Hide>
CST_FLASH_DEVICE void for_each_hidden(int row0, int column0, int seq_len, int window, int lane,
                                      Hide hide) {
  for (int n = 0; n < kColumns / 8; ++n)
    for (int e = 0; e < 4; ++e) {
      int row = row0 + fragment_row(lane, e), column = column0 + fragment_col(lane, n, e);
      bool visible = kRowsAreKeys ? key_visible(column, row, seq_len, window)
                                  : key_visible(row, column, seq_len, window);
      if (!visible) hide(n, e);
    }
}

// Writes 16 rows x D of a C-layout accumulator (times `factor` per row half) to a (N, heads, D)
// tensor; rows at or past valid_rows are skipped.
template <int kHeadDim>
CST_FLASH_DEVICE void store_rows(bf16* tensor, int heads_in_tensor, TileSource rows, int row0,
                                 const float (&accumulator)[kHeadDim / 8][4],
                                 const float (&factor)[2], int lane) {
  for (int half = 0; half < 2; ++half) {
    int row = row0 + fragment_row(lane, 2 * half);
    if (row >= rows.valid_rows) continue;
    bf16* destination =
        tensor + (int64_t(rows.first_token + row) * heads_in_tensor + rows.head) * kHeadDim;
    for (int n = 0; n < kHeadDim / 8; ++n) {
      uint32_t packed = pack_bf16x2(accumulator[n][2 * half] * factor[half],
                                    accumulator[n][2 * half + 1] * factor[half]);
      store_bf16x2(destination + fragment_col(lane, n, 0), packed);
    }
  }
}

// The backward holds a 16 x D gradient accumulator (dK and dV, or dQ) beside its P and dS
// tiles, which it forms all 64 columns at once, or in passes of fewer columns at the price of
// reloading the warp's K and V (or Q and dO) fragments for each pass; the sums run in the same
// order either way. At D = 128 the dK and dV accumulators alone take 128 registers per thread,
// and the dK/dV block that also forms dQ needs 32-column passes to stay within 255 registers
// without spilling (docs/attention.md, registers).
// How the dK/dV block takes part in dQ (AttentionBackward, kernels/attention.h): not at all (the
// dQ kernel recomputes S and dP for it), or it adds each query tile's share dS K to
// p.dq_accumulator, one key tile after another in a fixed order, or with atomics in whatever
// order the blocks come.
enum class DqShare { none, ordered, atomic };

template <int kHeadDim, DqShare kDqShare>
constexpr int backward_score_columns() {
  return kDqShare != DqShare::none ? 32 : kTileRows;
}

// ---- forward: one block per (query tile, query head, sequence) ----

// Folds a step's scores (16 rows x kColumns keys of a warp, q . k, masked keys -inf) into the
// online softmax of this thread's two rows, which works in the log2 domain x = scale_log2 * s:
// the running sum is rescaled by correction = exp2(old max - new max), and scores become the
// tile's weights exp2(scale_log2 * s - new max), an explicit fused multiply-add (left to itself
// the compiler may or may not contract it, and the two query tiles must round alike). The max of
// x is scale_log2 times the max of s, rounding included: scale_log2 > 0 and rounding is monotone.
// The running output is the caller's to rescale by the same correction (rescale_output).
template <int kColumns>
CST_FLASH_DEVICE void softmax_weights(float (&scores)[kColumns / 8][4], float scale_log2,
                                      float (&row_max)[2], float (&row_sum)[2],
                                      float (&correction)[2]) {
  for (int half = 0; half < 2; ++half) {
    float tile_max = -INFINITY;
    for (int n = 0; n < kColumns / 8; ++n)
      tile_max = fmaxf(tile_max, fmaxf(scores[n][2 * half], scores[n][2 * half + 1]));
    float new_max = fmaxf(row_max[half], quad_max(tile_max) * scale_log2);
    // A row that has seen no visible key yet keeps max -inf; subtracting 0 then keeps
    // exp2(-inf - base) = 0 instead of the NaN of (-inf) - (-inf).
    float base = new_max == -INFINITY ? 0.0f : new_max;
    correction[half] = fast_exp2(row_max[half] - base);
    row_max[half] = new_max;
    float tile_sum = 0.0f;
    for (int n = 0; n < kColumns / 8; ++n)
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        scores[n][e] = fast_exp2(fmaf(scores[n][e], scale_log2, -base));
        tile_sum += scores[n][e];
      }
    row_sum[half] = fmaf(row_sum[half], correction[half], tile_sum);
  }
}

// The running output of the thread's two rows times their corrections. Once a row's max has
// settled the factor is exactly 1, and multiplying by it changes no bit; the rescaling
// (kHeadDim / 4 multiplies) is then skipped. The branch is per thread, so a warp runs it when
// any of its rows got a new max.
template <int kHeadDim>
CST_FLASH_DEVICE void rescale_output(float (&output)[kHeadDim / 8][4],
                                     const float (&correction)[2]) {
  if (correction[0] != 1.0f || correction[1] != 1.0f)
    for (int n = 0; n < kHeadDim / 8; ++n)
      for (int e = 0; e < 4; ++e) output[n][e] *= correction[e / 2];
}

// Both at once, for the kernels whose output is not in flight in an asynchronous multiply.
template <int kHeadDim, int kColumns>
CST_FLASH_DEVICE void online_softmax_step(float (&scores)[kColumns / 8][4], float scale_log2,
                                          float (&row_max)[2], float (&row_sum)[2],
                                          float (&output)[kHeadDim / 8][4]) {
  float correction[2];
  softmax_weights<kColumns>(scores, scale_log2, row_max, row_sum, correction);
  rescale_output<kHeadDim>(output, correction);
}

// The end of the forward for a warp's 16 rows (warp_row0.. of the 64 rows `rows`): the output
// divided by the softmax sum, and the lse = ln(sum) + max (the max is in the log2 domain).
template <int kHeadDim>
CST_FLASH_DEVICE void store_forward_rows(const AttentionParams& p, int head, TileSource rows,
                                         int warp_row0, const float (&row_max)[2],
                                         const float (&row_sum)[2],
                                         const float (&output)[kHeadDim / 8][4], int lane) {
  float inverse_sum[2];
  for (int half = 0; half < 2; ++half) {
    float total = quad_sum(row_sum[half]);
    inverse_sum[half] = total > 0.0f ? 1.0f / total : 0.0f;
    int row = warp_row0 + fragment_row(lane, 2 * half);
    if (lane % 4 == 0 && row < rows.valid_rows)
      p.lse[int64_t(head) * p.tokens + rows.first_token + row] =
          (row_max[half] + log2f(total)) * kLn2;
  }
  store_rows<kHeadDim>(p.out, p.heads, rows, warp_row0, output, inverse_sum, lane);
}

// A forward query tile is kRowBlocks blocks of 64 rows; warp w owns rows 64 r + 16 w .. + 15 of
// each block r. With two blocks (128-query tiles, 32 rows per warp) every K and V fragment a warp
// loads from shared memory serves twice the rows, at the price of twice the registers for the
// output and the scores. The online softmax takes each 64-key tile in steps of kScoreColumns
// keys: 32 holds half the scores at once (at D = 128 with two row blocks the 64-key step needs
// more than 255 registers and spills), at the price of reading the warp's Q fragments once per
// step. The step changes where the running max is updated, so the rounding: tiles with the same
// step give the same bits.
template <int kHeadDim, int kRowBlocks, int kScoreColumns>
CST_FLASH_DEVICE void forward_block(const AttentionParams& p, char* shared, TileCoordinates at,
                                    int thread) {
  constexpr int kQueryRows = kRowBlocks * kTileRows;
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int query0 = at.tile * kQueryRows;
  if (query0 >= seq_len) return;  // the whole block leaves together: tiles past a short sequence
  const int kv_head = at.head / (p.heads / p.kv_heads);
  const float scale_log2 = p.scale * kLog2e;

  bf16* q_tile = reinterpret_cast<bf16*>(shared);  // kQueryRows x D: the row blocks in order
  const KeyTileStream<kHeadDim> keys = key_tile_stream<kHeadDim>(
      q_tile + kQueryRows * kHeadDim, query0, kQueryRows, seq_len, p.window);
  auto load_key_tile = [&](int i, int buffer) {
    keys.load(i, buffer, p, seq_start, seq_len, kv_head, thread);
  };
  // Row block r: the 64 queries from query0 + 64 r (none of them valid past the sequence's end).
  auto query_rows = [&](int r) {
    return tile_source(seq_start, seq_len, query0 + r * kTileRows, at.head);
  };
  for (int r = 0; r < kRowBlocks; ++r)
    load_tile_async<kHeadDim>(q_tile + r * kTileRows * kHeadDim, p.q, p.heads, query_rows(r),
                              thread);
  load_key_tile(0, 0);

  // Online softmax state for this thread's two rows of each block (log2 domain: x = scale *
  // log2(e) * s); row_sum is this thread's share, the quad's shares are summed at the end. The
  // loops over row blocks are unrolled: indexed at run time, these arrays would live in local
  // memory instead of registers.
  float output[kRowBlocks][kHeadDim / 8][4] = {};
  float row_max[kRowBlocks][2], row_sum[kRowBlocks][2];
  #pragma unroll
  for (int r = 0; r < kRowBlocks; ++r)
    for (int half = 0; half < 2; ++half) {
      row_max[r][half] = -INFINITY;
      row_sum[r][half] = 0.0f;
    }

  double_buffered_loop(keys.count(), load_key_tile, [&](int i, int buffer) {
    const int key0 = keys.key0(i);
    for (int column0 = 0; column0 < kTileRows; column0 += kScoreColumns) {
      float scores[kRowBlocks][kScoreColumns / 8][4];
      uint32_t probabilities[kRowBlocks][kScoreColumns / 16][4];  // the weights, as A fragments
      multiply_row_blocks_by_rows<kHeadDim, kScoreColumns, kRowBlocks>(
          scores, q_tile, warp_row0, keys.k(buffer), column0, lane);
      #pragma unroll
      for (int r = 0; r < kRowBlocks; ++r) {
        const int block_query0 = query0 + r * kTileRows;
        if (!tiles_fully_visible(block_query0, key0, seq_len, p.window))
          for_each_hidden<kScoreColumns, false>(
              block_query0 + warp_row0, key0 + column0, seq_len, p.window, lane,
              [&](int n, int e) { scores[r][n][e] = -INFINITY; });
        online_softmax_step<kHeadDim, kScoreColumns>(scores[r], scale_log2, row_max[r],
                                                     row_sum[r], output[r]);
        pack_a_fragments<kScoreColumns>(probabilities[r], scores[r]);
      }
      accumulate_row_blocks_times_tile<kHeadDim, kScoreColumns, kRowBlocks>(
          output, probabilities, keys.v(buffer), column0, lane);
    }
  });

  #pragma unroll
  for (int r = 0; r < kRowBlocks; ++r)
    store_forward_rows<kHeadDim>(p, at.head, query_rows(r), warp_row0, row_max[r], row_sum[r],
                                 output[r], lane);
}

// ---- backward ----
//
// P = exp2(scale_log2 * s - lse) is written as an explicit fused multiply-add: left to itself the
// compiler may or may not contract the product and the subtraction, and the dK/dV kernels with
// and without a share of dQ, which must give the same dk and dv bits, could then round differently.
// The emulator computes fmaf exactly as the GPU does.

// Writes a warp's 16 x kColumns tile, held as A fragments (pack_a_fragments), to rows row0..
// and columns column0.. of a 64 x 64 swizzled bf16 tile in shared memory. Register i of a
// fragment holds two adjacent columns: row +8 for odd i, columns +8 for i >= 2.
template <int kColumns>
CST_FLASH_DEVICE void store_fragment_tile(bf16* tile, const uint32_t (&a)[kColumns / 16][4],
                                          int row0, int column0, int lane) {
  for (int step = 0; step < kColumns / 16; ++step)
    for (int i = 0; i < 4; ++i) {
      int row = row0 + lane / 4 + (i % 2) * 8, chunk = column0 + step * 16 + (i / 2) * 8;
      store_shared_bf16x2(tile + swizzled_offset<kTileRows>(row, chunk) + (lane % 4) * 2, a[step][i]);
    }
}

// ---- dQ from the dK/dV blocks ----
//
// A dK/dV block's share of dQ / scale for a query tile is dS (64 queries x 64 keys) times its K
// tile (64 keys x D). Each warp forms its 16 query rows from the block's dS^T tile in shared
// memory, into an f32 (64, D) tile in shared memory; then the whole block moves that tile to
// global memory a row at a time, each warp 512 contiguous bytes per instruction.

// Element offset of (row, col) in the f32 (64, D) share: the 16-byte chunk c of row r is stored at
// chunk c ^ (r % 8), so the 8 rows a warp's fragment store touches fall in different banks.
template <int kHeadDim>
CST_FLASH_DEVICE int dq_share_offset(int row, int col) {
  const unsigned r = unsigned(row), c = unsigned(col);
  return int(r * kHeadDim + (((c / 4) ^ (r % 8)) * 4) + c % 4);
}

// The warp's 16 rows of dS (A fragments from the dS^T tile, k = keys) times the K tile, 16
// columns at a time, stored to the share.
template <int kHeadDim>
CST_FLASH_DEVICE void form_dq_share(float* share, int warp_row0, const bf16* dscores_transposed,
                                    const bf16* k_tile, int lane) {
  uint32_t dscores[kTileRows / 16][4];
  for (int step = 0; step < kTileRows / 16; ++step)
    load_a_fragment_of_transpose<kTileRows>(dscores[step], dscores_transposed, warp_row0,
                                            step * 16, lane);
  for (int col16 = 0; col16 < kHeadDim / 16; ++col16) {
    float dq[2][4] = {};
    for (int step = 0; step < kTileRows / 16; ++step) {
      uint32_t b[4];
      load_b_fragments_of_cols<kHeadDim>(b, k_tile, step * 16, col16 * 16, lane);
      mma_bf16_16x8x16(dq[0], dscores[step], b[0], b[1]);
      mma_bf16_16x8x16(dq[1], dscores[step], b[2], b[3]);
    }
    for (int n = 0; n < 2; ++n)
      for (int half = 0; half < 2; ++half) {
        int row = warp_row0 + fragment_row(lane, 2 * half);
        int col = col16 * 16 + fragment_col(lane, n, 0);
        store_shared_f32x2(share + dq_share_offset<kHeadDim>(row, col), dq[n][2 * half],
                           dq[n][2 * half + 1]);
      }
  }
}

// kCount of a thread's chunks of the share, from as many rows: each chunk's four f32, the
// (N, heads, D) index of its first element, and whether its row lies in the sequence. Moving
// them together keeps kCount global loads in flight at once, where one chunk at a time would
// wait for each load's round trip to L2 (at D = 128 a thread moves 16 chunks per share: two
// batches; 8 keeps the ordered dK/dV kernel within its registers).
struct DqShareChunks {
  static constexpr int kCount = 8;
  float values[kCount][4];
  int64_t index[kCount];
  bool valid[kCount];
};

// Calls move(chunks) for the chunks of the share that thread `thread` moves: chunk t % (D / 4)
// of rows t / (D / 4), + 128 / (D / 4), ..., so each warp moves whole rows of 512 contiguous
// bytes of (N, heads, D).
template <int kHeadDim, class Move>
CST_FLASH_DEVICE void move_dq_share(const float* share, TileSource rows, int heads, int thread,
                                    Move move) {
  constexpr int kChunksPerRow = kHeadDim / 4;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kTileRows % (DqShareChunks::kCount * kRowsPerPass) == 0, "whole batches");
  const int col = (thread % kChunksPerRow) * 4;
  const int64_t pass_stride = int64_t(kRowsPerPass) * heads * kHeadDim;
  #pragma unroll 1
  for (int row0 = thread / kChunksPerRow; row0 < kTileRows;
       row0 += DqShareChunks::kCount * kRowsPerPass) {
    DqShareChunks chunks;
    int64_t index = (int64_t(rows.first_token + row0) * heads + rows.head) * kHeadDim + col;
    for (int c = 0; c < DqShareChunks::kCount; ++c, index += pass_stride) {
      const int row = row0 + c * kRowsPerPass;
      chunks.valid[c] = row < rows.valid_rows;
      chunks.index[c] = index;
      load_shared_f32x4(share + dq_share_offset<kHeadDim>(row, col), chunks.values[c]);
    }
    move(chunks);
  }
}

// dq = scale * sums, rounded to bf16, for four consecutive elements of dq.
CST_FLASH_DEVICE void store_scaled_dq(bf16* dq, const float (&sums)[4], float scale) {
  store_bf16x2(dq, pack_bf16x2(sums[0] * scale, sums[1] * scale));
  store_bf16x2(dq + 2, pack_bf16x2(sums[2] * scale, sums[3] * scale));
}

// The turn counter of the query tile from position query0 of sequence `sequence` (first token
// seq_start), for one head. A sequence of L tokens has at most L / 64 + 1 tiles, so the tiles of
// sequence s can take the counters from seq_start / 64 + s on: N / 64 + S counters per head.
CST_FLASH_DEVICE int* dq_turn(const AttentionParams& p, int head, int sequence, int seq_start,
                              int query0) {
  return p.dq_turns + int64_t(head) * p.dq_turns_per_head + seq_start / kTileRows + sequence +
         query0 / kTileRows;
}

// The counter the blocks take their tiles from (kernels/attention.cu): the one after the turns.
CST_FLASH_DEVICE int* dq_ticket_counter(const AttentionParams& p) {
  return p.dq_turns + int64_t(p.heads) * p.dq_turns_per_head;
}

// Adds the share (in shared memory) of the block's key tile `at` to the query tile [query0,
// query0 + 64) of one head, in the order of the key tiles that see it: the first stores its share
// to p.dq_accumulator, each next one waits for its turn and adds its share to the sum so far with
// reductions, which L2 performs without a round trip to the SM (pass_turn's release waits until
// they are done, so the next key tile adds to the finished sum), and the last reads the sum and
// writes dq = scale * (sum + share). Every dq element is thus the same sum in the same order
// whatever the order the blocks run in. wait_for_turn's barrier also makes every warp's rows of
// the share visible to the threads that move them.
template <int kHeadDim>
CST_FLASH_DEVICE void add_dq_share_in_key_order(const AttentionParams& p, const float* share,
                                                TileSource query_rows, int query0, int seq_len,
                                                int seq_start, TileCoordinates at, int thread) {
  const int key_tile = at.tile;
  int first_key_tile, last_key_tile;
  key_tile_range(query0, kTileRows, seq_len, p.window, first_key_tile, last_key_tile);
  int* turn = dq_turn(p, query_rows.head, at.sequence, seq_start, query0);
  const bool first = key_tile == first_key_tile, last = key_tile == last_key_tile;
  wait_for_turn(turn, key_tile - first_key_tile, thread);
  move_dq_share<kHeadDim>(share, query_rows, p.heads, thread, [&](DqShareChunks& chunks) {
    if (last && !first) {
      float sums[DqShareChunks::kCount][4];
      for (int c = 0; c < DqShareChunks::kCount; ++c)
        if (chunks.valid[c]) load_f32x4_l2(p.dq_accumulator + chunks.index[c], sums[c]);
      for (int c = 0; c < DqShareChunks::kCount; ++c)
        if (chunks.valid[c])
          for (int i = 0; i < 4; ++i) chunks.values[c][i] += sums[c][i];
    }
    if (last) {
      for (int c = 0; c < DqShareChunks::kCount; ++c)
        if (chunks.valid[c]) store_scaled_dq(p.dq + chunks.index[c], chunks.values[c], p.scale);
    } else if (first) {
      for (int c = 0; c < DqShareChunks::kCount; ++c)
        if (chunks.valid[c]) store_f32x4_l2(p.dq_accumulator + chunks.index[c], chunks.values[c]);
    } else {
      for (int c = 0; c < DqShareChunks::kCount; ++c)
        if (chunks.valid[c]) atomic_add_f32x4(p.dq_accumulator + chunks.index[c], chunks.values[c]);
    }
  });
  if (!last) pass_turn(turn, thread);
}

// Adds the share to the zeroed p.dq_accumulator with atomics; dq_from_accumulator scales the sums
// into dq once every block has added its shares.
template <int kHeadDim>
CST_FLASH_DEVICE void add_dq_share_atomically(const AttentionParams& p, const float* share,
                                              TileSource query_rows, int thread) {
  block_barrier();  // every warp's rows of the share are in place
  move_dq_share<kHeadDim>(share, query_rows, p.heads, thread, [&](DqShareChunks& chunks) {
    for (int c = 0; c < DqShareChunks::kCount; ++c)
      if (chunks.valid[c]) atomic_add_f32x4(p.dq_accumulator + chunks.index[c], chunks.values[c]);
  });
}

// dq = scale * accumulator for the four elements of (N, H, D) from `index` (a multiple of 4),
// after every dK/dV block has added its shares with atomics.
constexpr int kDqElementsPerThread = 4;
CST_FLASH_DEVICE void dq_from_accumulator(const AttentionParams& p, int64_t index) {
  float sums[kDqElementsPerThread];
  load_f32x4_l2(p.dq_accumulator + index, sums);
  store_scaled_dq(p.dq + index, sums, p.scale);
}

// D_i = do_i . o_i for one (token, head) per warp, summed in f32.
template <int kHeadDim>
CST_FLASH_DEVICE void dout_dot_out_warp(const AttentionParams& p, int64_t row, int lane) {
  if (row >= int64_t(p.tokens) * p.heads) return;  // the whole warp: row is the warp's
  // Lane l takes elements kPerLane l .. + kPerLane - 1 of the row: one 4- or 8-byte load from
  // each tensor (rows are 16-byte aligned) rather than one 2-byte load per element.
  constexpr int kPerLane = kHeadDim / 32;
  float dout[kPerLane], out[kPerLane];
  load_bf16_values<kPerLane>(p.dout + row * kHeadDim + lane * kPerLane, dout);
  load_bf16_values<kPerLane>(p.out + row * kHeadDim + lane * kPerLane, out);
  float sum = 0.0f;
  for (int k = 0; k < kPerLane; ++k) sum += dout[k] * out[k];
  sum = warp_sum(sum);
  int64_t token = row / p.heads, head = row % p.heads;
  if (lane == 0) p.dout_dot_out[head * p.tokens + token] = sum;
}

// The steps of a dK/dV block: step i is query tile last_tile - i / group_size of the group's
// query head i % group_size, over the query tiles that see the block's keys.
struct QueryTileSteps {
  int first_tile, last_tile, group_size;
  CST_FLASH_DEVICE int count() const { return group_size * (last_tile - first_tile + 1); }
  CST_FLASH_DEVICE int query0(int i) const { return (last_tile - i / group_size) * kTileRows; }
  CST_FLASH_DEVICE int head(int i, int kv_head) const {
    return kv_head * group_size + i % group_size;
  }
};

CST_FLASH_DEVICE QueryTileSteps query_tile_steps(int key0, int seq_len, int window,
                                                 int group_size) {
  QueryTileSteps steps{0, 0, group_size};
  query_tile_range(key0, seq_len, window, steps.first_tile, steps.last_tile);
  return steps;
}

// The lse (log2 domain) and D of the 64 query rows from query0 (of head `head`) into shared
// memory, by threads 0..63 with plain loads and stores. Rows past the sequence are masked; 0
// keeps them finite.
CST_FLASH_DEVICE void load_tile_statistics(const AttentionParams& p, int head, int seq_start,
                                           int seq_len, int query0, int thread, float* lse_log2,
                                           float* dots) {
  if (thread < kTileRows) {
    int query = query0 + thread;
    int64_t index = int64_t(head) * p.tokens + seq_start + query;
    lse_log2[thread] = query < seq_len ? p.lse[index] * kLog2e : 0.0f;
    dots[thread] = query < seq_len ? p.dout_dot_out[index] : 0.0f;
  }
}

// P^T = exp2(scale_log2 * S^T - lse) and dS^T = P^T (dP^T - D) of a warp's 16 key rows x
// kColumns query columns from column0 on (C layout; the tiles are transposed here: rows are
// keys, columns are queries) from S^T and dP^T, with the query tile's lse (log2 domain) and D
// from tile_lse_log2 and tile_dots; packed as A fragments. Where `masked`, the hidden pairs (rows
// from key_row0, columns from query0 + column0) get 0: they may have overflowed to inf or NaN,
// so they are overwritten, not scaled.
template <int kColumns>
CST_FLASH_DEVICE void transposed_weight_fragments(
    uint32_t (&probability_fragments)[kColumns / 16][4],
    uint32_t (&dscore_fragments)[kColumns / 16][4], float (&probabilities)[kColumns / 8][4],
    float (&dscores)[kColumns / 8][4], float scale_log2, const float* tile_lse_log2,
    const float* tile_dots, int column0, bool masked, int key_row0, int query0, int seq_len,
    int window, int lane) {
  for (int n = 0; n < kColumns / 8; ++n)
    for (int e = 0; e < 4; ++e) {
      int column = column0 + fragment_col(lane, n, e);
      float probability =
          fast_exp2(fmaf(probabilities[n][e], scale_log2, -tile_lse_log2[column]));
      probabilities[n][e] = probability;
      dscores[n][e] = probability * (dscores[n][e] - tile_dots[column]);
    }
  if (masked)
    for_each_hidden<kColumns, true>(key_row0, query0 + column0, seq_len, window, lane,
                                    [&](int n, int e) {
                                      probabilities[n][e] = 0.0f;
                                      dscores[n][e] = 0.0f;
                                    });
  pack_a_fragments<kColumns>(probability_fragments, probabilities);
  pack_a_fragments<kColumns>(dscore_fragments, dscores);
}

// dK and dV for one (key tile, key/value head, sequence): loops over the query tiles that see
// these keys and the query heads of the group, so the sums happen in registers, in a fixed
// order. The query tiles go from the last down: with DqShare::ordered, the block of key tile j
// adds its share of a query tile after the block of key tile j - 1, which starts no later (the
// blocks take their tiles by ticket, kernels/attention.cu) and reaches each query tile no later
// (its last query tile is not after j's), so a block seldom waits for its turn. With
// DqShare::atomic the adds need no turn, and their order depends on timing.
template <int kHeadDim, DqShare kDqShare>
CST_FLASH_DEVICE void backward_dkdv_block(const AttentionParams& p, char* shared,
                                          TileCoordinates at, int thread) {
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int key0 = at.tile * kTileRows;
  if (key0 >= seq_len) return;
  const int group_size = p.heads / p.kv_heads;
  const float scale_log2 = p.scale * kLog2e;
  constexpr int kColumns = backward_score_columns<kHeadDim, kDqShare>();

  constexpr int kTileElements = kTileRows * kHeadDim;
  bf16* k_tile = reinterpret_cast<bf16*>(shared);
  bf16* v_tile = k_tile + kTileElements;
  // Two buffers of a Q tile and its dO tile, side by side: 64 x D f32, the size of a dQ share.
  bf16* query_dout_tiles = v_tile + kTileElements;
  float* lse_log2 = reinterpret_cast<float*>(query_dout_tiles + 4 * kTileElements);  // [2][64]
  float* dots = lse_log2 + 2 * kTileRows;                                             // [2][64]
  bf16* dscores_transposed = reinterpret_cast<bf16*>(dots + 2 * kTileRows);  // 64 x 64 (dQ only)
  auto q_tile_of = [&](int buffer) { return query_dout_tiles + 2 * buffer * kTileElements; };

  const QueryTileSteps query_steps = query_tile_steps(key0, seq_len, p.window, group_size);
  const int steps = query_steps.count();
  auto query_tile_of_step = [&](int i) { return query_steps.query0(i); };
  auto query_rows_of_step = [&](int i) {
    return tile_source(seq_start, seq_len, query_steps.query0(i), query_steps.head(i, at.head));
  };
  auto load_step = [&](int i, int buffer) {
    const TileSource query_rows = query_rows_of_step(i);
    bf16* q_tile = q_tile_of(buffer);
    load_query_dout_tiles<kHeadDim>(q_tile, q_tile + kTileElements, p, query_rows, thread);
    load_tile_statistics(p, query_rows.head, seq_start, seq_len, query_tile_of_step(i), thread,
                         lse_log2 + buffer * kTileRows, dots + buffer * kTileRows);
  };
  const TileSource key_rows = tile_source(seq_start, seq_len, key0, at.head);
  load_key_value_tiles<kHeadDim>(k_tile, v_tile, p, key_rows, thread);
  load_step(0, 0);

  float dk[kHeadDim / 8][4] = {};
  float dv[kHeadDim / 8][4] = {};
  double_buffered_loop(steps, load_step, [&](int i, int buffer) {
    bf16* q_tile = q_tile_of(buffer);
    const bf16* dout_tile = q_tile + kTileElements;
    const float* tile_lse_log2 = lse_log2 + buffer * kTileRows;
    const float* tile_dots = dots + buffer * kTileRows;
    const int query0 = query_tile_of_step(i);
    const bool masked = !tiles_fully_visible(query0, key0, seq_len, p.window);

    for (int column0 = 0; column0 < kTileRows; column0 += kColumns) {
      float probabilities[kColumns / 8][4];  // P^T
      multiply_rows_by_rows<kHeadDim, kColumns>(probabilities, k_tile, warp_row0, q_tile,
                                                column0, lane);
      float dscores[kColumns / 8][4];  // dP^T, then dS^T
      multiply_rows_by_rows<kHeadDim, kColumns>(dscores, v_tile, warp_row0, dout_tile, column0,
                                                lane);
      uint32_t probability_fragments[kColumns / 16][4], dscore_fragments[kColumns / 16][4];
      transposed_weight_fragments<kColumns>(probability_fragments, dscore_fragments,
                                            probabilities, dscores, scale_log2, tile_lse_log2,
                                            tile_dots, column0, masked, key0 + warp_row0, query0,
                                            seq_len, p.window, lane);
      accumulate_weights_times_tile<kHeadDim, kColumns>(dv, probability_fragments, dout_tile,
                                                        column0, lane);
      accumulate_weights_times_tile<kHeadDim, kColumns>(dk, dscore_fragments, q_tile, column0,
                                                        lane);
      if constexpr (kDqShare != DqShare::none)
        store_fragment_tile<kColumns>(dscores_transposed, dscore_fragments, warp_row0, column0,
                                      lane);
    }
    if constexpr (kDqShare != DqShare::none) {
      // Every warp's rows of dS^T are in place, and every warp is done with the Q and dO tiles,
      // whose place the share takes (the loop's barrier ends its reads before the buffer is
      // filled again).
      block_barrier();
      float* share = reinterpret_cast<float*>(q_tile);
      form_dq_share<kHeadDim>(share, warp_row0, dscores_transposed, k_tile, lane);
      if constexpr (kDqShare == DqShare::ordered)
        add_dq_share_in_key_order<kHeadDim>(p, share, query_rows_of_step(i), query0, seq_len,
                                            seq_start, at, thread);
      else
        add_dq_share_atomically<kHeadDim>(p, share, query_rows_of_step(i), thread);
    }
  });

  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {1.0f, 1.0f};
  store_rows<kHeadDim>(p.dk, p.kv_heads, key_rows, warp_row0, dk, dk_factor, lane);
  store_rows<kHeadDim>(p.dv, p.kv_heads, key_rows, warp_row0, dv, dv_factor, lane);
}

// The lse (log2 domain) and D of a thread's two query rows (of the warp's 16 from the sequence
// position query_row0), straight from global memory; 0 for rows past the sequence.
CST_FLASH_DEVICE void load_row_statistics(const AttentionParams& p, int head, int seq_start,
                                          int seq_len, int query_row0, int lane,
                                          float (&row_lse_log2)[2], float (&row_dot)[2]) {
  for (int half = 0; half < 2; ++half) {
    int query = query_row0 + fragment_row(lane, 2 * half);
    int64_t index = int64_t(head) * p.tokens + seq_start + query;
    row_lse_log2[half] = query < seq_len ? p.lse[index] * kLog2e : 0.0f;
    row_dot[half] = query < seq_len ? p.dout_dot_out[index] : 0.0f;
  }
}

// dS = P (dP - D) of a warp's 16 query rows x kColumns keys from the scores s and dP (C
// layout), P = exp2(scale_log2 * s - lse), packed as A fragments. Where `masked`, the hidden
// pairs (rows from query_row0, columns from key_column0) get 0: they may have overflowed to inf
// or NaN, so they are overwritten, not scaled.
template <int kColumns>
CST_FLASH_DEVICE void score_gradient_fragments(uint32_t (&dscore_fragments)[kColumns / 16][4],
                                               const float (&scores)[kColumns / 8][4],
                                               float (&dscores)[kColumns / 8][4],
                                               float scale_log2, const float (&row_lse_log2)[2],
                                               const float (&row_dot)[2], bool masked,
                                               int query_row0, int key_column0, int seq_len,
                                               int window, int lane) {
  for (int n = 0; n < kColumns / 8; ++n)
    for (int e = 0; e < 4; ++e) {
      float probability = fast_exp2(fmaf(scores[n][e], scale_log2, -row_lse_log2[e / 2]));
      dscores[n][e] = probability * (dscores[n][e] - row_dot[e / 2]);
    }
  if (masked)
    for_each_hidden<kColumns, false>(query_row0, key_column0, seq_len, window, lane,
                                     [&](int n, int e) { dscores[n][e] = 0.0f; });
  pack_a_fragments<kColumns>(dscore_fragments, dscores);
}

// dQ for one (query tile, query head, sequence): loops over the key tiles that query tile sees,
// recomputing P and dS, so dQ is summed in registers without atomics.
template <int kHeadDim>
CST_FLASH_DEVICE void backward_dq_block(const AttentionParams& p, char* shared,
                                        TileCoordinates at, int thread) {
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int query0 = at.tile * kTileRows;
  if (query0 >= seq_len) return;
  const int kv_head = at.head / (p.heads / p.kv_heads);
  const float scale_log2 = p.scale * kLog2e;
  constexpr int kColumns = backward_score_columns<kHeadDim, DqShare::none>();

  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* dout_tile = q_tile + kTileRows * kHeadDim;
  const KeyTileStream<kHeadDim> keys =
      key_tile_stream<kHeadDim>(dout_tile + kTileRows * kHeadDim, query0, kTileRows, seq_len,
                                p.window);
  auto load_key_tile = [&](int i, int buffer) {
    keys.load(i, buffer, p, seq_start, seq_len, kv_head, thread);
  };
  const TileSource query_rows = tile_source(seq_start, seq_len, query0, at.head);
  load_query_dout_tiles<kHeadDim>(q_tile, dout_tile, p, query_rows, thread);
  load_key_tile(0, 0);

  float row_lse_log2[2], row_dot[2];
  load_row_statistics(p, at.head, seq_start, seq_len, query0 + warp_row0, lane, row_lse_log2,
                      row_dot);

  float dq[kHeadDim / 8][4] = {};
  double_buffered_loop(keys.count(), load_key_tile, [&](int i, int buffer) {
    const bf16* k_tile = keys.k(buffer);
    const bf16* v_tile = keys.v(buffer);
    const int key0 = keys.key0(i);
    const bool masked = !tiles_fully_visible(query0, key0, seq_len, p.window);

    for (int column0 = 0; column0 < kTileRows; column0 += kColumns) {
      float probabilities[kColumns / 8][4];
      multiply_rows_by_rows<kHeadDim, kColumns>(probabilities, q_tile, warp_row0, k_tile,
                                                column0, lane);
      float dscores[kColumns / 8][4];  // dP, then dS
      multiply_rows_by_rows<kHeadDim, kColumns>(dscores, dout_tile, warp_row0, v_tile, column0,
                                                lane);
      uint32_t dscore_fragments[kColumns / 16][4];
      score_gradient_fragments<kColumns>(dscore_fragments, probabilities, dscores, scale_log2,
                                         row_lse_log2, row_dot, masked, query0 + warp_row0,
                                         key0 + column0, seq_len, p.window, lane);
      accumulate_weights_times_tile<kHeadDim, kColumns>(dq, dscore_fragments, k_tile, column0,
                                                        lane);
    }
  });

  const float dq_factor[2] = {p.scale, p.scale};
  store_rows<kHeadDim>(p.dq, p.heads, query_rows, warp_row0, dq, dq_factor, lane);
}

// Dynamic shared memory of each kernel, in bytes.
template <int kHeadDim, int kRowBlocks>
constexpr int forward_shared_bytes() {
  return (kRowBlocks + 4) * kTileRows * kHeadDim * int(sizeof(bf16));  // Q + 2 K + 2 V
}
template <int kHeadDim, DqShare kDqShare>
constexpr int dkdv_shared_bytes() {  // K + V + 2 Q + 2 dO, 2 x 64 lse and D, and the dS^T tile
  return 6 * kTileRows * kHeadDim * int(sizeof(bf16)) + 4 * kTileRows * int(sizeof(float)) +
         (kDqShare != DqShare::none ? kTileRows * kTileRows * int(sizeof(bf16)) : 0);
}
template <int kHeadDim>
constexpr int dq_shared_bytes() {
  return 6 * kTileRows * kHeadDim * int(sizeof(bf16));  // Q + dO + 2 K + 2 V
}

}  // namespace cst::cuda::flash
