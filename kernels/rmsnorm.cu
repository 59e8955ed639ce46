// CUDA RMSNorm. Model widths (2048 to 8192 channels in 16-byte chunks) run blocks of 256 threads
// that each own one row at a time: each thread keeps its one to four chunks of the row in
// registers, so the row is read from memory once, and the sum over the row goes through shared
// memory in a fixed order. The grid is as large as the GPU holds at once and each block walks
// rows blockIdx.x, + gridDim.x, ...: it starts the loads of a row two rows ahead, before the
// barriers of the rows in between, so its memory traffic does not stop at every row's barrier,
// and it reads the weights once. Other rows run one warp per row, which reads the row twice
// (sum of squares, then normalise), the second time mostly from L1/L2. cuda::RmsNormRows
// chooses how the model widths' rows are spread instead (kernels/rmsnorm.h).
// x, out, dout, dx share one dtype T (bf16 or f32); the weight may be bf16 or f32; rstd is f32.
#include <type_traits>

#include "kernels/cuda_utils.cuh"
#include "kernels/rmsnorm.h"

namespace cst::cuda {

constexpr int kRowsPerBlock = kThreads / 32;

// The row-walking kernels: rows of kRowThreads x kChunk x (1 to kRowChunksPerThread) channels.
// Each is built for every chunk count, so a thread holds registers for the chunks its row has
// and not for four, and more blocks share a multiprocessor.
constexpr int kRowThreads = 256, kRowChunksPerThread = 4;
constexpr int kRowMinChannels = kRowThreads * kChunk;
constexpr int kRowMaxChannels = kRowMinChannels * kRowChunksPerThread;

bool runs_row_walk(int channels, bool chunked) {
  return chunked && channels >= kRowMinChannels && channels <= kRowMaxChannels;
}

// Calls launch(std::integral_constant<int, N>()) with N the chunks per thread a row-walking
// kernel needs for a row of `channels`.
template <class Launch>
void with_row_chunks(int channels, Launch launch) {
  switch (ceil_div(channels, kRowMinChannels)) {
    case 1: return launch(std::integral_constant<int, 1>());
    case 2: return launch(std::integral_constant<int, 2>());
    case 3: return launch(std::integral_constant<int, 3>());
    default: return launch(std::integral_constant<int, kRowChunksPerThread>());
  }
}

// The grid of a row-walking kernel: as many blocks as the GPU holds at once, or one per row.
template <auto kernel>
int row_walk_grid(int64_t rows, RmsNormRows spread) {
  return spread == RmsNormRows::block_per_row ? int(rows) : resident_grid<kernel, kRowThreads>(rows);
}

// The sum of every thread's value in a block of kRowThreads, in a fixed order (the same bits on
// every run); partial holds kRowThreads / 32 floats. Consecutive calls alternate between two
// `partial` arrays: a thread writes one only after the barrier of the call in between, which no
// thread reaches before it has read that array's sums.
__device__ inline float block_sum(float value, float* partial) {
  value = warp_sum(value);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kRowThreads / 32; ++w) total += partial[w];
  return total;
}

// Chunk i of this thread in a row-walking kernel starts at this channel (past the row's end
// when the row has fewer chunks).
__device__ inline int row_chunk_channel(int i) { return (threadIdx.x + i * kRowThreads) * kChunk; }

// Starts the loads of this thread's chunks of a row.
template <int kChunks, class T>
__device__ inline void load_row_chunks(const T* row, int channels, RawChunk<T> (&chunks)[kChunks]) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i)
    if (row_chunk_channel(i) < channels) load_raw_chunk(row + row_chunk_channel(i), chunks[i]);
}

// This thread's chunks of a row as floats (waits for their loads).
template <int kChunks, class T>
__device__ inline void unpack_row_chunks(const RawChunk<T> (&chunks)[kChunks], int channels,
                                         float (&values)[kChunks][kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i)
    if (row_chunk_channel(i) < channels) unpack_chunk(chunks[i], values[i]);
}

// This block's rows, blockIdx.x, + gridDim.x, ..., with the loads of each row started two rows
// ahead. `Loads` holds one row's loads in flight; load(row, loads) starts them; process(row,
// loads, refill, partial) unpacks them, calls refill() (which starts the loads of the row two
// ahead in the same registers), then finishes the row with its block sum in `partial`. The two
// Loads alternate in a loop unrolled by hand, so no register copy waits on a load in flight, and
// the two `partial` arrays alternate with them (block_sum).
template <class Loads, class Load, class Process>
__device__ inline void walk_rows(int64_t rows, float (&partial)[2][kRowThreads / 32], Load load,
                                 Process process) {
  const int64_t stride = gridDim.x;
  Loads first, second;
  int64_t row = blockIdx.x;
  if (row < rows) load(row, first);
  if (row + stride < rows) load(row + stride, second);
  // Row r with its loads in `loads`, refilled with those of row r + 2 * stride.
  auto step = [&](int64_t r, Loads& loads, float* row_partial) {
    process(r, loads, [&] { if (r + 2 * stride < rows) load(r + 2 * stride, loads); }, row_partial);
  };
  for (; row < rows; row += 2 * stride) {
    step(row, first, partial[0]);
    if (row + stride < rows) step(row + stride, second, partial[1]);
  }
}

template <int kChunks, class T>
struct ForwardLoads {
  RawChunk<T> x[kChunks];
};

template <int kChunks, class T, class W>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_forward_row_kernel(T* out, float* rstd, const T* x, const W* weight, int64_t rows,
                               int channels, float eps) {
  __shared__ float partial[2][kRowThreads / 32];
  RawChunk<W> weights[kChunks];  // raw, converted per row: half the registers for bf16
  load_row_chunks(weight, channels, weights);
  auto load = [&](int64_t row, ForwardLoads<kChunks, T>& loads) {
    load_row_chunks(x + row * channels, channels, loads.x);
  };
  auto process = [&](int64_t row, ForwardLoads<kChunks, T>& loads, auto refill,
                     float* row_partial) {
    float values[kChunks][kChunk];
    unpack_row_chunks(loads.x, channels, values);
    refill();
    float sum_of_squares = 0.0f;
#pragma unroll
    for (int i = 0; i < kChunks; ++i)
      if (row_chunk_channel(i) < channels)
        for (int k = 0; k < kChunk; ++k) sum_of_squares += values[i][k] * values[i][k];
    const float r = 1.0f / sqrtf(block_sum(sum_of_squares, row_partial) / float(channels) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = row_chunk_channel(i);
      if (c >= channels) continue;
      float w[kChunk];
      unpack_chunk(weights[i], w);
      for (int k = 0; k < kChunk; ++k) values[i][k] = w[k] * (values[i][k] * r);
      store_chunk<kChunk>(out + row * channels + c, values[i]);
    }
  };
  walk_rows<ForwardLoads<kChunks, T>>(rows, partial, load, process);
}

template <int kChunks, class T>
struct BackwardLoads {
  RawChunk<T> dout[kChunks], x[kChunks];
  float r;
};

// dx = r (g - n mean(g n)) with g = dout * w and n = x * r. The row's dout and x stay in
// registers between the two passes as raw bits (for bf16 half the registers of floats: at 5120
// channels two blocks share a multiprocessor instead of one), and g and n are formed again in
// the second pass, with the same roundings. dx may alias dout (the loads ahead read other rows).
template <int kChunks, class T, class W>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_backward_input_row_kernel(T* dx, const T* dout, const T* x, const W* weight,
                                      const float* rstd, int64_t rows, int channels) {
  __shared__ float partial[2][kRowThreads / 32];
  RawChunk<W> weights[kChunks];
  load_row_chunks(weight, channels, weights);
  auto load = [&](int64_t row, BackwardLoads<kChunks, T>& loads) {
    load_row_chunks(dout + row * channels, channels, loads.dout);
    load_row_chunks(x + row * channels, channels, loads.x);
    loads.r = rstd[row];
  };
  // g and n of chunk i.
  auto form = [&](const RawChunk<T>& dout_chunk, const RawChunk<T>& x_chunk, int i, float r,
                  float (&g)[kChunk], float (&n)[kChunk]) {
    float w[kChunk];
    unpack_chunk(weights[i], w);
    unpack_chunk(dout_chunk, g);
    unpack_chunk(x_chunk, n);
    for (int k = 0; k < kChunk; ++k) {
      g[k] *= w[k];
      n[k] *= r;
    }
  };
  auto process = [&](int64_t row, BackwardLoads<kChunks, T>& loads, auto refill,
                     float* row_partial) {
    const float r = loads.r;
    RawChunk<T> dout_row[kChunks], x_row[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) dout_row[i] = loads.dout[i], x_row[i] = loads.x[i];
    refill();
    float sum_g_n = 0.0f;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (row_chunk_channel(i) >= channels) continue;
      float g[kChunk], n[kChunk];
      form(dout_row[i], x_row[i], i, r, g, n);
      for (int k = 0; k < kChunk; ++k) sum_g_n += g[k] * n[k];
    }
    const float mean_g_n = block_sum(sum_g_n, row_partial) / float(channels);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = row_chunk_channel(i);
      if (c >= channels) continue;
      float g[kChunk], n[kChunk], result[kChunk];
      form(dout_row[i], x_row[i], i, r, g, n);
      for (int k = 0; k < kChunk; ++k) result[k] = r * (g[k] - n[k] * mean_g_n);
      store_chunk<kChunk>(dx + row * channels + c, result);
    }
  };
  walk_rows<BackwardLoads<kChunks, T>>(rows, partial, load, process);
}

// RmsNormRows::warp_per_row's forward: one warp per row, lane l holding chunks l, l + 32, ... of
// the row in registers as raw bits (kLaneChunks of them, 256 bytes at most), so the row is read
// once, all of a lane's loads are in flight at once, and the sum is the warp's own: no barrier.
// At 4096 bf16 channels it takes 148 registers (sm_90a): blocks of four warps let three share a
// multiprocessor, 12 rows (96 KB) in flight, where blocks of eight would fit once.
constexpr int kWarpRowBytesPerLane = 256;
constexpr int kWarpRowThreads = 128, kWarpRowsPerBlock = kWarpRowThreads / 32;

template <class T>
constexpr int warp_row_max_lane_chunks() {
  return kWarpRowBytesPerLane / int(sizeof(RawChunk<T>));
}

template <int kLaneChunks, class T, class W>
__global__ void __launch_bounds__(kWarpRowThreads)
    rmsnorm_forward_warp_row_kernel(T* out, float* rstd, const T* x, const W* weight, int64_t rows,
                                    int channels, float eps) {
  const int64_t row = int64_t(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp leaves together
  auto channel = [&](int i) { return (lane + 32 * i) * kChunk; };
  RawChunk<T> chunks[kLaneChunks];
#pragma unroll
  for (int i = 0; i < kLaneChunks; ++i)
    if (channel(i) < channels) load_raw_chunk(x + row * channels + channel(i), chunks[i]);
  float sum_of_squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kLaneChunks; ++i) {
    if (channel(i) >= channels) continue;
    float values[kChunk];
    unpack_chunk(chunks[i], values);
    for (int k = 0; k < kChunk; ++k) sum_of_squares += values[k] * values[k];
  }
  const float r = 1.0f / sqrtf(warp_sum(sum_of_squares) / float(channels) + eps);
  if (lane == 0) rstd[row] = r;
#pragma unroll
  for (int i = 0; i < kLaneChunks; ++i) {
    const int c = channel(i);
    if (c >= channels) continue;
    float values[kChunk], w[kChunk];
    unpack_chunk(chunks[i], values);
    load_chunk<kChunk>(weight + c, w);
    for (int k = 0; k < kChunk; ++k) values[k] = w[k] * (values[k] * r);
    store_chunk<kChunk>(out + row * channels + c, values);
  }
}

int lane_chunks_of(int channels) { return ceil_div(channels, 32 * kChunk); }

template <class T>
bool fits_lane_registers(int channels) {
  return lane_chunks_of(channels) <= warp_row_max_lane_chunks<T>();
}

// Calls launch(std::integral_constant<int, N>()) with N the chunks per lane (8 or 16) the
// register warp kernel needs for a row of `channels`: rows of the row-walking range (2048
// channels and more) that fit (fits_lane_registers).
template <class T, class Launch>
void with_lane_chunks(int channels, Launch launch) {
  if (lane_chunks_of(channels) <= 8) {
    launch(std::integral_constant<int, 8>());
  } else if constexpr (warp_row_max_lane_chunks<T>() >= 16) {
    launch(std::integral_constant<int, 16>());
  }
}

// The row loops below are unrolled 4 times (#pragma unroll 4): a lane then has four 16-byte loads
// in flight instead of one, which a memory-bound kernel with one warp per row needs to keep the
// memory system busy (the trip count, channels / 256, is unknown at compile time).

// out (rows, channels), rstd (rows), x (rows, channels), weight (channels).
template <int Width, class T, class W>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const W* weight,
                                       int64_t rows, int channels, float eps) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp leaves together
  const T* x_row = x + row * channels;
  T* out_row = out + row * channels;

  float sum_of_squares = 0.0f;
#pragma unroll 4
  for (int c = lane * Width; c < channels; c += 32 * Width) {
    float values[Width];
    load_chunk<Width>(x_row + c, values);
    for (int k = 0; k < Width; ++k) sum_of_squares += values[k] * values[k];
  }
  sum_of_squares = warp_sum(sum_of_squares);
  float r = 1.0f / sqrtf(sum_of_squares / float(channels) + eps);
  if (lane == 0) rstd[row] = r;

#pragma unroll 4
  for (int c = lane * Width; c < channels; c += 32 * Width) {
    float values[Width], weights[Width];
    load_chunk<Width>(x_row + c, values);
    load_chunk<Width>(weight + c, weights);
    for (int k = 0; k < Width; ++k) values[k] = weights[k] * (values[k] * r);
    store_chunk<Width>(out_row + c, values);
  }
}

// dx (rows, channels); each lane reads its positions before writing them, so dx may alias dout.
template <int Width, class T, class W>
__global__ void rmsnorm_backward_input_kernel(T* dx, const T* dout, const T* x, const W* weight,
                                              const float* rstd, int64_t rows, int channels) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* dout_row = dout + row * channels;
  const T* x_row = x + row * channels;
  T* dx_row = dx + row * channels;
  float r = rstd[row];

  // mean over c of g_c n_c, with g = dout * w and n = x * r
  float sum_g_n = 0.0f;
#pragma unroll 4
  for (int c = lane * Width; c < channels; c += 32 * Width) {
    float d[Width], xs[Width], w[Width];
    load_chunk<Width>(dout_row + c, d);
    load_chunk<Width>(x_row + c, xs);
    load_chunk<Width>(weight + c, w);
    for (int k = 0; k < Width; ++k) sum_g_n += (d[k] * w[k]) * (xs[k] * r);
  }
  float mean_g_n = warp_sum(sum_g_n) / float(channels);

#pragma unroll 4
  for (int c = lane * Width; c < channels; c += 32 * Width) {
    float d[Width], xs[Width], w[Width], result[Width];
    load_chunk<Width>(dout_row + c, d);
    load_chunk<Width>(x_row + c, xs);
    load_chunk<Width>(weight + c, w);
    for (int k = 0; k < Width; ++k) result[k] = r * (d[k] * w[k] - (xs[k] * r) * mean_g_n);
    store_chunk<Width>(dx_row + c, result);
  }
}

// dweight_c += sum over rows of dout_c * x_c * r. A block owns 32 columns and all rows: its
// 8 row lanes each sum every 8th row, then the 8 partial sums are added in a fixed order.
// No atomics, so the result is the same on every run. The norm weights are frozen in LoRA
// training, so this pass runs only when a caller asks for dweight.
constexpr int kWeightColumns = 32, kWeightRowLanes = 8;

template <class T>
__global__ void rmsnorm_backward_weight_kernel(float* dweight, const T* dout, const T* x,
                                               const float* rstd, int64_t rows, int channels) {
  __shared__ float partial_sums[kWeightRowLanes][kWeightColumns];
  int c = blockIdx.x * kWeightColumns + threadIdx.x;
  float partial = 0.0f;
  if (c < channels) {
    for (int64_t row = threadIdx.y; row < rows; row += kWeightRowLanes) {
      int64_t i = row * channels + c;
      partial += to_float(dout[i]) * (to_float(x[i]) * rstd[row]);
    }
  }
  partial_sums[threadIdx.y][threadIdx.x] = partial;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float sum = 0.0f;
    for (int lane = 0; lane < kWeightRowLanes; ++lane) sum += partial_sums[lane][threadIdx.x];
    dweight[c] += sum;
  }
}

static void check_rmsnorm_tensors(const char* op, const Tensor& x, const Tensor& weight,
                                  const Tensor& rstd, std::initializer_list<const Tensor*> like_x) {
  check_rank(x, 2, op, "x");
  check_dims(weight, {x.shape[1]}, op, "weight");
  check_dims(rstd, {x.shape[0]}, op, "rstd");
  check_dtype(rstd, DType::f32, op, "rstd");
  for (const Tensor* t : {&x, &weight, &rstd}) check_on_gpu(*t, op, "every argument");
  for (const Tensor* t : like_x) {
    check_on_gpu(*t, op, "every argument");
    if (t->dtype != x.dtype) fail(op, ": expected the dtype of x ", x.describe(), ", got ", t->describe());
    check_dims(*t, {x.shape[0], x.shape[1]}, op, "activation");
  }
  if (x.shape[1] > (int64_t(1) << 30)) fail(op, ": ", x.describe(), " has too many channels");
}

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, RmsNormRows spread) {
  const char* op = "rmsnorm_forward";
  check_rmsnorm_tensors(op, x, weight, rstd, {&out});
  int64_t rows = x.shape[0];
  int channels = int(x.shape[1]);
  if (rows == 0 || channels == 0) return;
  int blocks = ceil_div(rows, kRowsPerBlock);
  with_float_type(x, op, "x", [&](auto x_tag) {
    with_float_type(weight, op, "weight", [&](auto weight_tag) {
      using T = decltype(x_tag);
      using W = decltype(weight_tag);
      T* out_data = static_cast<T*>(out.data);
      const T* x_data = static_cast<const T*>(x.data);
      const W* weight_data = static_cast<const W*>(weight.data);
      const bool chunked = can_use_chunks(channels, out_data, x_data, weight_data);
      const bool row_walk = runs_row_walk(channels, chunked);
      if (row_walk && spread != RmsNormRows::warp_per_row)
        with_row_chunks(channels, [&](auto chunks) {
          constexpr auto kernel = rmsnorm_forward_row_kernel<chunks(), T, W>;
          const int grid = row_walk_grid<kernel>(rows, spread);
          CST_LAUNCH(grid, kRowThreads, 0, kernel)(
              out_data, rstd.f32(), x_data, weight_data, rows, channels, eps);
        });
      else if (row_walk && fits_lane_registers<T>(channels))
        with_lane_chunks<T>(channels, [&](auto lane_chunks) {
          CST_LAUNCH(ceil_div(rows, kWarpRowsPerBlock), kWarpRowThreads, 0,
                     rmsnorm_forward_warp_row_kernel<lane_chunks(), T, W>)(
              out_data, rstd.f32(), x_data, weight_data, rows, channels, eps);
        });
      else if (chunked)
        CST_LAUNCH(blocks, kThreads, 0, rmsnorm_forward_kernel<kChunk>)(
            out_data, rstd.f32(), x_data, weight_data, rows, channels, eps);
      else
        CST_LAUNCH(blocks, kThreads, 0, rmsnorm_forward_kernel<1>)(
            out_data, rstd.f32(), x_data, weight_data, rows, channels, eps);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, RmsNormRows spread) {
  const char* op = "rmsnorm_backward";
  check_rmsnorm_tensors(op, x, weight, rstd, {&dx, &dout});
  if (!dweight.empty()) {
    check_on_gpu(dweight, op, "dweight");
    check_dims(dweight, {x.shape[1]}, op, "dweight");
    check_dtype(dweight, DType::f32, op, "dweight");
  }
  int64_t rows = x.shape[0];
  int channels = int(x.shape[1]);
  if (rows == 0 || channels == 0) return;
  with_float_type(x, op, "x", [&](auto x_tag) {
    using T = decltype(x_tag);
    T* dx_data = static_cast<T*>(dx.data);
    const T* dout_data = static_cast<const T*>(dout.data);
    const T* x_data = static_cast<const T*>(x.data);
    // dweight first: dx may alias dout.
    if (!dweight.empty()) {
      dim3 threads(kWeightColumns, kWeightRowLanes);
      CST_LAUNCH(ceil_div(channels, kWeightColumns), threads, 0, rmsnorm_backward_weight_kernel)(
          dweight.f32(), dout_data, x_data, rstd.f32(), rows, channels);
      CUDA_CHECK_LAUNCH();
    }
    with_float_type(weight, op, "weight", [&](auto weight_tag) {
      using W = decltype(weight_tag);
      const W* weight_data = static_cast<const W*>(weight.data);
      int blocks = ceil_div(rows, kRowsPerBlock);
      const bool chunked = can_use_chunks(channels, dx_data, dout_data, x_data, weight_data);
      if (runs_row_walk(channels, chunked) && spread != RmsNormRows::warp_per_row)
        with_row_chunks(channels, [&](auto chunks) {
          constexpr auto kernel = rmsnorm_backward_input_row_kernel<chunks(), T, W>;
          const int grid = row_walk_grid<kernel>(rows, spread);
          CST_LAUNCH(grid, kRowThreads, 0, kernel)(
              dx_data, dout_data, x_data, weight_data, rstd.f32(), rows, channels);
        });
      else if (chunked)
        CST_LAUNCH(blocks, kThreads, 0, rmsnorm_backward_input_kernel<kChunk>)(
            dx_data, dout_data, x_data, weight_data, rstd.f32(), rows, channels);
      else
        CST_LAUNCH(blocks, kThreads, 0, rmsnorm_backward_input_kernel<1>)(
            dx_data, dout_data, x_data, weight_data, rstd.f32(), rows, channels);
      CUDA_CHECK_LAUNCH();
    });
  });
}

const char* rmsnorm_rows_name(RmsNormRows spread) {
  switch (spread) {
    case RmsNormRows::resident_blocks: return "resident blocks";
    case RmsNormRows::block_per_row: return "block per row";
    case RmsNormRows::warp_per_row: return "warp per row";
  }
  return "?";
}

}  // namespace cst::cuda
