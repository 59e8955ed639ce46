// The per-block bodies of the flash attention kernels (see kernels/attention.h for the math and
// kernels/attention.cu for the launches). Every block has 4 warps and works on 64-row tiles; each
// warp owns 16 rows of the block's tile, so the softmax statistics and the gradient rows it
// accumulates never leave the warp's registers and no two warps write the same output.
//
// Shared-memory tiles hold 64 rows x head_dim bf16. The 16-byte chunk c of row r is stored at
// chunk c ^ (r % 8): the eight row addresses an ldmatrix reads then fall in eight different bank
// groups instead of one.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/attention_primitives.cuh"

namespace cst::cuda::flash {

using bf16 = __nv_bfloat16;

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
  bf16* dk = nullptr;               // (N, KVH, D)
  bf16* dv = nullptr;               // (N, KVH, D)
  const int32_t* cu_seqlens = nullptr;  // (S + 1) on the device
  int tokens = 0;                   // N
  int heads = 0;                    // H
  int kv_heads = 0;                 // KVH
  int window = 0;                   // 0 = plain causal
  float scale = 0;                  // 1 / sqrt(D)
};

// Which tile of which head of which sequence a block works on.
struct TileCoordinates {
  int tile = 0;
  int head = 0;  // query head (forward, dq) or key/value head (dk/dv)
  int sequence = 0;
};

// ---- masks and tile ranges (positions are within the sequence) ----

__device__ __forceinline__ bool key_visible(int query, int key, int seq_len, int window) {
  // key <= query < seq_len also keeps the key inside the sequence.
  return key <= query && query < seq_len && (window == 0 || key > query - window);
}

// True when every (query, key) pair of the two tiles is visible, so the mask can be skipped.
// Visibility is monotone in both positions, so checking the extreme pairs is enough.
__device__ __forceinline__ bool tiles_fully_visible(int query0, int key0, int seq_len, int window) {
  int query_last = query0 + kTileRows - 1, key_last = key0 + kTileRows - 1;
  return key_last <= query0 && query_last < seq_len &&
         (window == 0 || key0 > query_last - window);
}

// Key tiles that hold at least one key visible to some query of the tile [query0, query0 + 64).
__device__ __forceinline__ void key_tile_range(int query0, int seq_len, int window, int& first,
                                               int& last) {
  int first_key = window == 0 ? 0 : max(0, query0 - window + 1);
  int last_key = min(query0 + kTileRows - 1, seq_len - 1);
  first = first_key / kTileRows;
  last = last_key / kTileRows;
}

// Query tiles that hold at least one query that sees some key of the tile [key0, key0 + 64).
__device__ __forceinline__ void query_tile_range(int key0, int seq_len, int window, int& first,
                                                 int& last) {
  int last_query = seq_len - 1;
  if (window != 0) last_query = min(last_query, key0 + kTileRows - 1 + window - 1);
  first = key0 / kTileRows;
  last = last_query / kTileRows;
}

// ---- shared-memory tiles ----

// Element offset of (row, col) in a swizzled tile; col is a multiple of 8 (one 16-byte chunk).
template <int kHeadDim>
__device__ __forceinline__ int swizzled_offset(int row, int col) {
  return row * kHeadDim + (((col / 8) ^ (row % 8)) * 8);
}

// Starts copying rows [first_token, first_token + 64) of one head of a (N, heads, D) tensor into a
// tile; rows at or past valid_rows are zero-filled.
template <int kHeadDim>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* tensor, int first_token,
                                                int valid_rows, int head, int heads_in_tensor,
                                                int thread) {
  constexpr int kChunksPerRow = kHeadDim / 8;
  for (int chunk = thread; chunk < kTileRows * kChunksPerRow; chunk += kThreads) {
    int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    bool valid = row < valid_rows;
    const bf16* source =
        valid ? tensor + (int64_t(first_token + row) * heads_in_tensor + head) * kHeadDim + col
              : tensor;
    copy_async_16(tile + swizzled_offset<kHeadDim>(row, col), source, valid);
  }
}

// A fragment (16 rows x 16 cols at row0, col0) of a row-major tile.
template <int kHeadDim>
__device__ __forceinline__ void load_a_fragment(uint32_t (&a)[4], const bf16* tile, int row0,
                                                int col0, int lane) {
  ldmatrix_x4(a, tile + swizzled_offset<kHeadDim>(row0 + lane % 16, col0 + (lane / 16) * 8));
}

// B fragments of (tile rows row0..row0+15)^T restricted to cols col0..col0+15: the tile's rows
// are the mma's n dimension. b[0], b[1] serve rows row0..+7; b[2], b[3] rows row0+8..+15.
template <int kHeadDim>
__device__ __forceinline__ void load_b_fragments_of_rows(uint32_t (&b)[4], const bf16* tile,
                                                         int row0, int col0, int lane) {
  int row = row0 + lane % 8 + (lane / 16) * 8, col = col0 + ((lane / 8) % 2) * 8;
  ldmatrix_x4(b, tile + swizzled_offset<kHeadDim>(row, col));
}

// B fragments of the tile itself: rows row0..row0+15 are the mma's k dimension, cols col0..+15
// its n dimension. b[0], b[1] serve cols col0..+7; b[2], b[3] cols col0+8..+15.
template <int kHeadDim>
__device__ __forceinline__ void load_b_fragments_of_cols(uint32_t (&b)[4], const bf16* tile,
                                                         int row0, int col0, int lane) {
  int row = row0 + lane % 8 + ((lane / 8) % 2) * 8, col = col0 + (lane / 16) * 8;
  ldmatrix_x4_transposed(b, tile + swizzled_offset<kHeadDim>(row, col));
}

// ---- warp-level products ----

// scores (16 x 64) = rows [row0, row0+16) of `left` times the 64 rows of `right`, transposed:
// both tiles are row-major over the head dimension.
template <int kHeadDim>
__device__ __forceinline__ void multiply_rows_by_rows(float (&scores)[8][4], const bf16* left,
                                                      int row0, const bf16* right, int lane) {
  for (int n = 0; n < 8; ++n)
    for (int e = 0; e < 4; ++e) scores[n][e] = 0.0f;
  for (int step = 0; step < kHeadDim / 16; ++step) {
    uint32_t a[4];
    load_a_fragment<kHeadDim>(a, left, row0, step * 16, lane);
    for (int block16 = 0; block16 < 4; ++block16) {
      uint32_t b[4];
      load_b_fragments_of_rows<kHeadDim>(b, right, block16 * 16, step * 16, lane);
      mma_bf16_16x8x16(scores[2 * block16], a, b[0], b[1]);
      mma_bf16_16x8x16(scores[2 * block16 + 1], a, b[2], b[3]);
    }
  }
}

// accumulator (16 x D) += weights (16 x 64, in C layout) times the 64-row tile `right` (64 x D).
// A C fragment pair of n8 tiles is exactly the A fragment of one k16 step, after rounding to bf16.
template <int kHeadDim>
__device__ __forceinline__ void accumulate_weights_times_tile(float (&accumulator)[kHeadDim / 8][4],
                                                              const float (&weights)[8][4],
                                                              const bf16* right, int lane) {
  for (int step = 0; step < 4; ++step) {
    const float* low = weights[2 * step];
    const float* high = weights[2 * step + 1];
    uint32_t a[4] = {pack_bf16x2(low[0], low[1]), pack_bf16x2(low[2], low[3]),
                     pack_bf16x2(high[0], high[1]), pack_bf16x2(high[2], high[3])};
    for (int col16 = 0; col16 < kHeadDim / 16; ++col16) {
      uint32_t b[4];
      load_b_fragments_of_cols<kHeadDim>(b, right, step * 16, col16 * 16, lane);
      mma_bf16_16x8x16(accumulator[2 * col16], a, b[0], b[1]);
      mma_bf16_16x8x16(accumulator[2 * col16 + 1], a, b[2], b[3]);
    }
  }
}

// Element e of n8 tile n of a C fragment sits at (row, col) of the 16 x 64 warp tile.
__device__ __forceinline__ int fragment_row(int lane, int e) { return lane / 4 + (e / 2) * 8; }
__device__ __forceinline__ int fragment_col(int lane, int n, int e) {
  return n * 8 + (lane % 4) * 2 + (e % 2);
}

// Writes 16 rows x D of a C-layout accumulator (times `factor` per row half) to a (N, heads, D)
// tensor; rows at or past valid_rows are skipped.
template <int kHeadDim>
__device__ __forceinline__ void store_rows(bf16* tensor, const float (&accumulator)[kHeadDim / 8][4],
                                           const float (&factor)[2], int first_token, int row0,
                                           int valid_rows, int head, int heads_in_tensor,
                                           int lane) {
  for (int half = 0; half < 2; ++half) {
    int row = row0 + fragment_row(lane, 2 * half);
    if (row >= valid_rows) continue;
    bf16* destination = tensor + (int64_t(first_token + row) * heads_in_tensor + head) * kHeadDim;
    for (int n = 0; n < kHeadDim / 8; ++n) {
      uint32_t packed = pack_bf16x2(accumulator[n][2 * half] * factor[half],
                                    accumulator[n][2 * half + 1] * factor[half]);
      *reinterpret_cast<uint32_t*>(destination + fragment_col(lane, n, 0)) = packed;
    }
  }
}

// ---- forward: one block per (query tile, query head, sequence) ----

template <int kHeadDim>
__device__ void forward_block(const AttentionParams& p, char* shared, TileCoordinates at,
                              int thread) {
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int query0 = at.tile * kTileRows;
  if (query0 >= seq_len) return;  // the whole block leaves together: tiles past a short sequence
  const int kv_head = at.head / (p.heads / p.kv_heads);
  const float scale_log2 = p.scale * kLog2e;

  constexpr int kTileElements = kTileRows * kHeadDim;
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* k_tiles = q_tile + kTileElements;        // two buffers: compute on one, fill the other
  bf16* v_tiles = k_tiles + 2 * kTileElements;

  int first_tile, last_tile;
  key_tile_range(query0, seq_len, p.window, first_tile, last_tile);

  auto load_key_tile = [&](int key_tile, int buffer) {
    int key0 = key_tile * kTileRows;
    load_tile_async<kHeadDim>(k_tiles + buffer * kTileElements, p.k, seq_start + key0,
                              seq_len - key0, kv_head, p.kv_heads, thread);
    load_tile_async<kHeadDim>(v_tiles + buffer * kTileElements, p.v, seq_start + key0,
                              seq_len - key0, kv_head, p.kv_heads, thread);
  };
  load_tile_async<kHeadDim>(q_tile, p.q, seq_start + query0, seq_len - query0, at.head, p.heads,
                            thread);
  load_key_tile(first_tile, 0);
  copy_async_commit();
  copy_async_wait<0>();
  block_barrier();

  // Online softmax state for this thread's two rows (log2 domain: x = scale * log2(e) * s).
  float output[kHeadDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this thread's share; the quad's shares are summed at the end

  for (int key_tile = first_tile; key_tile <= last_tile; ++key_tile) {
    const int buffer = (key_tile - first_tile) % 2;
    if (key_tile < last_tile) {
      load_key_tile(key_tile + 1, 1 - buffer);
      copy_async_commit();
    }
    const bf16* k_tile = k_tiles + buffer * kTileElements;
    const bf16* v_tile = v_tiles + buffer * kTileElements;
    const int key0 = key_tile * kTileRows;

    float scores[8][4];
    multiply_rows_by_rows<kHeadDim>(scores, q_tile, warp_row0, k_tile, lane);
    const bool masked = !tiles_fully_visible(query0, key0, seq_len, p.window);
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) {
        int query = query0 + warp_row0 + fragment_row(lane, e);
        int key = key0 + fragment_col(lane, n, e);
        bool visible = !masked || key_visible(query, key, seq_len, p.window);
        scores[n][e] = visible ? scores[n][e] * scale_log2 : -INFINITY;
      }

    for (int half = 0; half < 2; ++half) {
      float tile_max = -INFINITY;
      for (int n = 0; n < 8; ++n)
        tile_max = fmaxf(tile_max, fmaxf(scores[n][2 * half], scores[n][2 * half + 1]));
      float new_max = fmaxf(row_max[half], quad_max(tile_max));
      // A row that has seen no visible key yet keeps max -inf; subtracting 0 then keeps
      // exp2(-inf - base) = 0 instead of the NaN of (-inf) - (-inf).
      float base = new_max == -INFINITY ? 0.0f : new_max;
      float correction = fast_exp2(row_max[half] - base);
      row_max[half] = new_max;
      float tile_sum = 0.0f;
      for (int n = 0; n < 8; ++n)
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          scores[n][e] = fast_exp2(scores[n][e] - base);
          tile_sum += scores[n][e];
        }
      row_sum[half] = row_sum[half] * correction + tile_sum;
      for (int n = 0; n < kHeadDim / 8; ++n) {
        output[n][2 * half] *= correction;
        output[n][2 * half + 1] *= correction;
      }
    }
    accumulate_weights_times_tile<kHeadDim>(output, scores, v_tile, lane);

    if (key_tile < last_tile) copy_async_wait<0>();
    block_barrier();  // the next tile is in place, and nobody still reads this buffer
  }

  float inverse_sum[2];
  for (int half = 0; half < 2; ++half) {
    float total = quad_sum(row_sum[half]);
    inverse_sum[half] = total > 0.0f ? 1.0f / total : 0.0f;
    int row = warp_row0 + fragment_row(lane, 2 * half);
    if (lane % 4 == 0 && query0 + row < seq_len)
      p.lse[int64_t(at.head) * p.tokens + seq_start + query0 + row] =
          (row_max[half] + log2f(total)) * kLn2;
  }
  store_rows<kHeadDim>(p.out, output, inverse_sum, seq_start + query0, warp_row0,
                       seq_len - query0, at.head, p.heads, lane);
}

// ---- backward ----

// D_i = do_i . o_i for one (token, head) per warp, summed in f32.
template <int kHeadDim>
__device__ void dout_dot_out_warp(const AttentionParams& p, int64_t row, int lane) {
  if (row >= int64_t(p.tokens) * p.heads) return;
  const bf16* dout = p.dout + row * kHeadDim;
  const bf16* out = p.out + row * kHeadDim;
  float sum = 0.0f;
  for (int i = lane; i < kHeadDim; i += 32) sum += float(dout[i]) * float(out[i]);
  sum = warp_sum(sum);
  int64_t token = row / p.heads, head = row % p.heads;
  if (lane == 0) p.dout_dot_out[head * p.tokens + token] = sum;
}

// Starts loading one query tile's Q, dO (async) and its lse and D (plain loads) into a buffer.
template <int kHeadDim>
__device__ __forceinline__ void load_query_side(const AttentionParams& p, bf16* q_tile,
                                                bf16* dout_tile, float* lse_log2, float* dot,
                                                int seq_start, int seq_len, int query0, int head,
                                                int thread) {
  load_tile_async<kHeadDim>(q_tile, p.q, seq_start + query0, seq_len - query0, head, p.heads,
                            thread);
  load_tile_async<kHeadDim>(dout_tile, p.dout, seq_start + query0, seq_len - query0, head,
                            p.heads, thread);
  if (thread < kTileRows) {
    int query = query0 + thread;
    int64_t index = int64_t(head) * p.tokens + seq_start + query;
    // Rows past the sequence are masked; 0 keeps them finite.
    lse_log2[thread] = query < seq_len ? p.lse[index] * kLog2e : 0.0f;
    dot[thread] = query < seq_len ? p.dout_dot_out[index] : 0.0f;
  }
}

// dK and dV for one (key tile, key/value head, sequence): loops over the query heads of the group
// and the query tiles that see these keys, so the sums happen in registers, in a fixed order.
template <int kHeadDim>
__device__ void backward_dkdv_block(const AttentionParams& p, char* shared, TileCoordinates at,
                                    int thread) {
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int key0 = at.tile * kTileRows;
  if (key0 >= seq_len) return;
  const int group_size = p.heads / p.kv_heads;
  const float scale_log2 = p.scale * kLog2e;

  constexpr int kTileElements = kTileRows * kHeadDim;
  bf16* k_tile = reinterpret_cast<bf16*>(shared);
  bf16* v_tile = k_tile + kTileElements;
  bf16* q_tiles = v_tile + kTileElements;        // two buffers each
  bf16* dout_tiles = q_tiles + 2 * kTileElements;
  float* lse_log2 = reinterpret_cast<float*>(dout_tiles + 2 * kTileElements);  // [2][64]
  float* dots = lse_log2 + 2 * kTileRows;                                       // [2][64]

  int first_tile, last_tile;
  query_tile_range(key0, seq_len, p.window, first_tile, last_tile);
  const int tiles_per_head = last_tile - first_tile + 1;
  const int steps = group_size * tiles_per_head;

  auto load_step = [&](int step, int buffer) {
    int head = at.head * group_size + step / tiles_per_head;
    int query0 = (first_tile + step % tiles_per_head) * kTileRows;
    load_query_side<kHeadDim>(p, q_tiles + buffer * kTileElements,
                              dout_tiles + buffer * kTileElements, lse_log2 + buffer * kTileRows,
                              dots + buffer * kTileRows, seq_start, seq_len, query0, head, thread);
  };
  load_tile_async<kHeadDim>(k_tile, p.k, seq_start + key0, seq_len - key0, at.head, p.kv_heads,
                            thread);
  load_tile_async<kHeadDim>(v_tile, p.v, seq_start + key0, seq_len - key0, at.head, p.kv_heads,
                            thread);
  load_step(0, 0);
  copy_async_commit();
  copy_async_wait<0>();
  block_barrier();

  float dk[kHeadDim / 8][4] = {};
  float dv[kHeadDim / 8][4] = {};
  for (int step = 0; step < steps; ++step) {
    const int buffer = step % 2;
    if (step + 1 < steps) {
      load_step(step + 1, 1 - buffer);
      copy_async_commit();
    }
    const bf16* q_tile = q_tiles + buffer * kTileElements;
    const bf16* dout_tile = dout_tiles + buffer * kTileElements;
    const float* tile_lse_log2 = lse_log2 + buffer * kTileRows;
    const float* tile_dots = dots + buffer * kTileRows;
    const int query0 = (first_tile + step % tiles_per_head) * kTileRows;
    // Tiles are transposed here: rows are keys, columns are queries.
    const bool masked = !tiles_fully_visible(query0, key0, seq_len, p.window);

    float probabilities[8][4];  // P^T
    multiply_rows_by_rows<kHeadDim>(probabilities, k_tile, warp_row0, q_tile, lane);
    float dscores[8][4];        // dP^T, then dS^T
    multiply_rows_by_rows<kHeadDim>(dscores, v_tile, warp_row0, dout_tile, lane);
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) {
        int column = fragment_col(lane, n, e);
        int key = key0 + warp_row0 + fragment_row(lane, e);
        bool visible = !masked || key_visible(query0 + column, key, seq_len, p.window);
        float probability =
            visible ? fast_exp2(probabilities[n][e] * scale_log2 - tile_lse_log2[column]) : 0.0f;
        probabilities[n][e] = probability;
        dscores[n][e] = visible ? probability * (dscores[n][e] - tile_dots[column]) : 0.0f;
      }
    accumulate_weights_times_tile<kHeadDim>(dv, probabilities, dout_tile, lane);
    accumulate_weights_times_tile<kHeadDim>(dk, dscores, q_tile, lane);

    if (step + 1 < steps) copy_async_wait<0>();
    block_barrier();
  }

  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {1.0f, 1.0f};
  store_rows<kHeadDim>(p.dk, dk, dk_factor, seq_start + key0, warp_row0, seq_len - key0, at.head,
                       p.kv_heads, lane);
  store_rows<kHeadDim>(p.dv, dv, dv_factor, seq_start + key0, warp_row0, seq_len - key0, at.head,
                       p.kv_heads, lane);
}

// dQ for one (query tile, query head, sequence): loops over the key tiles that query tile sees,
// recomputing P and dS, so dQ is summed in registers without atomics.
template <int kHeadDim>
__device__ void backward_dq_block(const AttentionParams& p, char* shared, TileCoordinates at,
                                  int thread) {
  const int lane = thread % 32, warp_row0 = (thread / 32) * 16;
  const int seq_start = p.cu_seqlens[at.sequence];
  const int seq_len = p.cu_seqlens[at.sequence + 1] - seq_start;
  const int query0 = at.tile * kTileRows;
  if (query0 >= seq_len) return;
  const int kv_head = at.head / (p.heads / p.kv_heads);
  const float scale_log2 = p.scale * kLog2e;

  constexpr int kTileElements = kTileRows * kHeadDim;
  bf16* q_tile = reinterpret_cast<bf16*>(shared);
  bf16* dout_tile = q_tile + kTileElements;
  bf16* k_tiles = dout_tile + kTileElements;     // two buffers each
  bf16* v_tiles = k_tiles + 2 * kTileElements;

  int first_tile, last_tile;
  key_tile_range(query0, seq_len, p.window, first_tile, last_tile);

  auto load_key_tile = [&](int key_tile, int buffer) {
    int key0 = key_tile * kTileRows;
    load_tile_async<kHeadDim>(k_tiles + buffer * kTileElements, p.k, seq_start + key0,
                              seq_len - key0, kv_head, p.kv_heads, thread);
    load_tile_async<kHeadDim>(v_tiles + buffer * kTileElements, p.v, seq_start + key0,
                              seq_len - key0, kv_head, p.kv_heads, thread);
  };
  load_tile_async<kHeadDim>(q_tile, p.q, seq_start + query0, seq_len - query0, at.head, p.heads,
                            thread);
  load_tile_async<kHeadDim>(dout_tile, p.dout, seq_start + query0, seq_len - query0, at.head,
                            p.heads, thread);
  load_key_tile(first_tile, 0);
  copy_async_commit();

  // This thread's two rows: their lse (log2 domain) and D, straight from global memory.
  float row_lse_log2[2], row_dot[2];
  for (int half = 0; half < 2; ++half) {
    int query = query0 + warp_row0 + fragment_row(lane, 2 * half);
    int64_t index = int64_t(at.head) * p.tokens + seq_start + query;
    row_lse_log2[half] = query < seq_len ? p.lse[index] * kLog2e : 0.0f;
    row_dot[half] = query < seq_len ? p.dout_dot_out[index] : 0.0f;
  }
  copy_async_wait<0>();
  block_barrier();

  float dq[kHeadDim / 8][4] = {};
  for (int key_tile = first_tile; key_tile <= last_tile; ++key_tile) {
    const int buffer = (key_tile - first_tile) % 2;
    if (key_tile < last_tile) {
      load_key_tile(key_tile + 1, 1 - buffer);
      copy_async_commit();
    }
    const bf16* k_tile = k_tiles + buffer * kTileElements;
    const bf16* v_tile = v_tiles + buffer * kTileElements;
    const int key0 = key_tile * kTileRows;
    const bool masked = !tiles_fully_visible(query0, key0, seq_len, p.window);

    float probabilities[8][4];
    multiply_rows_by_rows<kHeadDim>(probabilities, q_tile, warp_row0, k_tile, lane);
    float dscores[8][4];  // dP, then dS
    multiply_rows_by_rows<kHeadDim>(dscores, dout_tile, warp_row0, v_tile, lane);
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) {
        int query = query0 + warp_row0 + fragment_row(lane, e);
        int key = key0 + fragment_col(lane, n, e);
        bool visible = !masked || key_visible(query, key, seq_len, p.window);
        float probability = visible ? fast_exp2(probabilities[n][e] * scale_log2 -
                                                row_lse_log2[e / 2])
                                    : 0.0f;
        dscores[n][e] = visible ? probability * (dscores[n][e] - row_dot[e / 2]) : 0.0f;
      }
    accumulate_weights_times_tile<kHeadDim>(dq, dscores, k_tile, lane);

    if (key_tile < last_tile) copy_async_wait<0>();
    block_barrier();
  }

  const float dq_factor[2] = {p.scale, p.scale};
  store_rows<kHeadDim>(p.dq, dq, dq_factor, seq_start + query0, warp_row0, seq_len - query0,
                       at.head, p.heads, lane);
}

// Dynamic shared memory of each kernel, in bytes.
template <int kHeadDim>
constexpr int forward_shared_bytes() {
  return 5 * kTileRows * kHeadDim * int(sizeof(bf16));  // Q + 2 K + 2 V
}
template <int kHeadDim>
constexpr int dkdv_shared_bytes() {
  return 6 * kTileRows * kHeadDim * int(sizeof(bf16)) + 4 * kTileRows * int(sizeof(float));
}
template <int kHeadDim>
constexpr int dq_shared_bytes() {
  return 6 * kTileRows * kHeadDim * int(sizeof(bf16));  // Q + dO + 2 K + 2 V
}

}  // namespace cst::cuda::flash
