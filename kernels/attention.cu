// Flash attention on the GPU: forward, and a backward in two or three kernels.
// The tile code is in kernels/attention_tiles.cuh; this file checks the arguments, keeps the
// device copy of the sequence offsets and launches.
//
//   forward      grid (query tiles, H, S): O and lse of one 64- or 128-query tile of one head
//   D            one warp per (token, head): D = rowsum(dO * O)
//   dK, dV       grid (key tiles, KVH, S): loops over the query tiles and the group's query heads
//   dQ           grid (query tiles, H, S): loops over key tiles
// Every output element is written by exactly one thread, after a fixed sequence of additions,
// so the results are bitwise reproducible from run to run. With AttentionBackward::ordered_dq
// the dK/dV blocks also add dQ to an f32 accumulator, taking turns, and the last of a query
// tile writes dq; with atomic_dq they add it with atomics to a zeroed accumulator, which a last
// kernel scales into dq. Either replaces the dQ kernel. Head dims other than 64 and 128 (the
// small test and demo models) go to the plain kernels of kernels/attention_rowwise.cuh.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/attention_rowwise.cuh"
#include "kernels/attention_tiles.cuh"
#include "kernels/attention_warpgroup.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/device.h"

namespace cst::cuda {
namespace {

using flash::AttentionParams;
using flash::TileCoordinates;

// Tiles are handed out longest-first, which keeps the tail of the grid short: under the causal
// mask the last query tile of a sequence sees the most keys, and the first key tile is seen by
// the most queries.
__device__ __forceinline__ TileCoordinates query_tile_coordinates() {
  return {int(gridDim.x - 1 - blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
}
__device__ __forceinline__ TileCoordinates key_tile_coordinates() {
  return {int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
}

template <int kHeadDim, int kRowBlocks, int kScoreColumns>
__global__ void __launch_bounds__(flash::kThreads) forward_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  flash::forward_block<kHeadDim, kRowBlocks, kScoreColumns>(params, shared,
                                                            query_tile_coordinates(),
                                                            int(threadIdx.x));
}

// Compiled for every architecture, but its warpgroup multiplies exist only on sm_90a: elsewhere
// they trap, and forward_for_head_dim launches it only on a device of compute capability 9.0.
template <int kHeadDim>
__global__ void __launch_bounds__(flash::kQueryTileThreads)
    forward_warpgroups_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  flash::forward_warpgroups_block<kHeadDim>(params, shared, query_tile_coordinates(),
                                            int(threadIdx.x));
}

// The dK/dV blocks that add dQ in key order take their tiles by ticket, in the order they start:
// key tile 0 of every (KV head, sequence), then key tile 1, and so on. A block then only waits
// for blocks that started before it, which keep their SMs until they finish, so the turns cannot
// deadlock whatever order the GPU starts blocks in; and the longest blocks (the first key tiles,
// seen by the most queries) start first.
__device__ TileCoordinates key_tile_by_ticket(const AttentionParams& params) {
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = flash::take_ticket(flash::dq_ticket_counter(params));
  __syncthreads();
  const int pairs = int(gridDim.y * gridDim.z);
  return {ticket / pairs, ticket % pairs % int(gridDim.y), ticket % pairs / int(gridDim.y)};
}

template <int kHeadDim, flash::DqShare kDqShare>
__global__ void __launch_bounds__(flash::kThreads) dkdv_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  const TileCoordinates at = kDqShare == flash::DqShare::ordered
                                 ? key_tile_by_ticket(params)
                                 : key_tile_coordinates();
  flash::backward_dkdv_block<kHeadDim, kDqShare>(params, shared, at, int(threadIdx.x));
}

// elements is a multiple of kDqElementsPerThread (it is tokens x heads x 64 or 128).
__global__ void dq_from_accumulator_kernel(AttentionParams params, int64_t elements) {
  int64_t index = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * flash::kDqElementsPerThread;
  if (index < elements) flash::dq_from_accumulator(params, index);
}

template <int kHeadDim>
__global__ void __launch_bounds__(flash::kThreads) dq_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  flash::backward_dq_block<kHeadDim>(params, shared, query_tile_coordinates(), int(threadIdx.x));
}

// As forward_warpgroups_kernel: launched only on a device of compute capability 9.0.
template <int kHeadDim>
__global__ void __launch_bounds__(flash::kThreads) dkdv_warpgroup_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  flash::backward_dkdv_warpgroup_block<kHeadDim>(params, shared, key_tile_coordinates(),
                                                 int(threadIdx.x));
}

template <int kHeadDim>
__global__ void __launch_bounds__(flash::kQueryTileThreads)
    dq_warpgroups_kernel(AttentionParams params) {
  char* shared = reinterpret_cast<char*>(dynamic_shared_memory());
  flash::backward_dq_warpgroups_block<kHeadDim>(params, shared, query_tile_coordinates(),
                                                int(threadIdx.x));
}

template <int kHeadDim>
__global__ void dout_dot_out_kernel(AttentionParams params) {
  int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  flash::dout_dot_out_warp<kHeadDim>(params, row, int(threadIdx.x % 32));
}

// A device allocation that grows on demand and is kept between calls. Every kernel runs on the
// backend's one stream, so a later call's upload cannot overtake an earlier call's kernels.
struct ScratchBuffer {
  Buffer memory;
  void* reserve(size_t bytes) {
    if (memory.size() < bytes) memory = Buffer(Device::cuda, bytes);
    return memory.data();
  }
};

struct DeviceOffsets {
  const int32_t* data = nullptr;
  int sequences = 0;
  int max_seqlen = 0;
};

// Copies the offsets to the device and finds the longest sequence, which sizes the grid. The
// public op (kernels/attention.cpp) has already checked the offsets and every shape.
// Every layer of a step passes the same offsets, so they are uploaded only when they change:
// a copy from pageable host memory waits for the stream, which would stall every call.
DeviceOffsets upload_offsets(const std::vector<int32_t>& cu_seqlens) {
  static ScratchBuffer storage;
  static std::vector<int32_t> uploaded;
  DeviceOffsets offsets;
  offsets.sequences = int(cu_seqlens.size()) - 1;
  for (int s = 0; s < offsets.sequences; ++s)
    offsets.max_seqlen = std::max(offsets.max_seqlen, cu_seqlens[s + 1] - cu_seqlens[s]);
  if (offsets.sequences > 65535)
    fail("attention: ", offsets.sequences, " sequences in one batch (the CUDA grid allows 65535)");
  if (cu_seqlens != uploaded) {
    size_t bytes = cu_seqlens.size() * sizeof(int32_t);
    storage.reserve(bytes);
    CUDA_CHECK(cudaMemcpyAsync(storage.memory.data(), cu_seqlens.data(), bytes,
                               cudaMemcpyHostToDevice, stream()));
    uploaded = cu_seqlens;
  }
  offsets.data = static_cast<const int32_t*>(storage.memory.data());
  return offsets;
}

// The head dims the flash kernels are built for; others run the row-wise kernels.
bool has_flash_kernels(int head_dim) { return head_dim == 64 || head_dim == 128; }

// What only the CUDA kernels need beyond the public op's checks (the flash kernels' 16-byte
// vector loads need aligned rows).
void check_operand(const Tensor& t, DType dtype, const char* what, int head_dim) {
  if (t.dtype != dtype)
    fail("attention on cuda: ", what, " must be ", dtype_name(dtype), ", got ", t.describe());
  if (has_flash_kernels(head_dim) && reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
    fail("attention on cuda: ", what, " must be 16-byte aligned for vector loads");
}

AttentionParams make_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const AttentionShape& shape) {
  if (shape.head_dim < 1 || shape.head_dim > rowwise::kMaxHeadDim)
    fail("attention on cuda: head_dim ", shape.head_dim, " is not supported (1 to ", rowwise::kMaxHeadDim,
         "; 64 and 128 run the flash kernels)");
  if (q.shape[0] > INT32_MAX / 2) fail("attention on cuda: ", q.shape[0], " tokens is too many");
  if (shape.heads > 65535)  // grid y of the forward and dQ launches
    fail("attention on cuda: ", shape.heads, " heads (the CUDA grid allows 65535)");
  check_operand(q, DType::bf16, "q", shape.head_dim);
  check_operand(k, DType::bf16, "k", shape.head_dim);
  check_operand(v, DType::bf16, "v", shape.head_dim);
  check_operand(out, DType::bf16, "out", shape.head_dim);
  check_operand(lse, DType::f32, "lse", shape.head_dim);

  AttentionParams params;
  params.q = static_cast<const __nv_bfloat16*>(q.data);
  params.k = static_cast<const __nv_bfloat16*>(k.data);
  params.v = static_cast<const __nv_bfloat16*>(v.data);
  params.out = static_cast<__nv_bfloat16*>(out.data);
  params.lse = static_cast<float*>(lse.data);
  params.tokens = int(q.shape[0]);
  params.heads = shape.heads;
  params.kv_heads = shape.kv_heads;
  params.window = shape.window;
  params.scale = 1.0f / std::sqrt(float(shape.head_dim));
  return params;
}

// Raises the kernel's dynamic shared memory limit (over 48 KiB needs an explicit opt-in) and
// launches one block of `threads` per (tile, head, sequence).
template <class Kernel>
void launch_tiles(Kernel kernel, int shared_bytes, int tiles, int heads,
                  const DeviceOffsets& offsets, const AttentionParams& params,
                  int threads = flash::kThreads) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  shared_bytes));
  dim3 grid(tiles, heads, offsets.sequences);
  CST_LAUNCH(grid, threads, shared_bytes, kernel)(params);
  CUDA_CHECK_LAUNCH();
}

// A forward query tile of kRowBlocks blocks of 64 rows, its softmax in steps of kScoreColumns keys.
template <int kHeadDim, int kRowBlocks, int kScoreColumns = flash::kTileRows>
void forward_with_row_blocks(const AttentionParams& params, const DeviceOffsets& offsets) {
  int tiles = ceil_div(offsets.max_seqlen, kRowBlocks * flash::kTileRows);
  launch_tiles(forward_kernel<kHeadDim, kRowBlocks, kScoreColumns>,
               flash::forward_shared_bytes<kHeadDim, kRowBlocks>(), tiles, params.heads, offsets,
               params);
}

template <int kHeadDim>
void forward_with_warpgroups(const AttentionParams& params, const DeviceOffsets& offsets) {
  constexpr int kQueryRows = flash::kQueryTileWarpgroups * flash::kTileRows;
  launch_tiles(forward_warpgroups_kernel<kHeadDim>,
               flash::forward_warpgroups_shared_bytes<kHeadDim>(),
               ceil_div(offsets.max_seqlen, kQueryRows), params.heads, offsets, params,
               flash::kQueryTileThreads);
}

template <int kHeadDim>
void forward_for_head_dim(const AttentionParams& params, const DeviceOffsets& offsets,
                          ForwardQueryTile tile) {
  switch (tile) {
    case ForwardQueryTile::rows128_warpgroups:
      return forward_with_warpgroups<kHeadDim>(params, offsets);
    case ForwardQueryTile::rows64: return forward_with_row_blocks<kHeadDim, 1>(params, offsets);
    case ForwardQueryTile::rows128: return forward_with_row_blocks<kHeadDim, 2>(params, offsets);
    case ForwardQueryTile::rows128_steps32:
      return forward_with_row_blocks<kHeadDim, 2, 32>(params, offsets);
  }
}

// Elements of dq, (N, H, D).
int64_t dq_elements(const AttentionParams& params, int head_dim) {
  return int64_t(params.tokens) * params.heads * head_dim;
}

// The f32 accumulator of dq / scale that the dK/dV blocks add their shares to.
float* dq_accumulator(int64_t elements) {
  static ScratchBuffer accumulator;
  return static_cast<float*>(accumulator.reserve(size_t(elements) * sizeof(float)));
}

// dq by the dK/dV blocks in key order: the turn counters (N / 64 + S per head) and the ticket
// counter are zeroed; the accumulator needs no zeroing, as the first share of each query tile is
// stored, not added.
template <int kHeadDim>
void dkdv_and_ordered_dq(AttentionParams params, const DeviceOffsets& offsets, int tiles) {
  static ScratchBuffer counters;
  params.dq_accumulator = dq_accumulator(dq_elements(params, kHeadDim));
  params.dq_turns_per_head = params.tokens / flash::kTileRows + offsets.sequences;
  const size_t bytes = (size_t(params.dq_turns_per_head) * params.heads + 1) * sizeof(int);
  params.dq_turns = static_cast<int*>(counters.reserve(bytes));
  CUDA_CHECK(cudaMemsetAsync(params.dq_turns, 0, bytes, stream()));
  launch_tiles(dkdv_kernel<kHeadDim, flash::DqShare::ordered>,
               flash::dkdv_shared_bytes<kHeadDim, flash::DqShare::ordered>(), tiles,
               params.kv_heads, offsets, params);
}

// dq through the f32 accumulator: zeroed, filled by the dK/dV blocks' atomics, scaled into dq.
template <int kHeadDim>
void dkdv_and_atomic_dq(AttentionParams params, const DeviceOffsets& offsets, int tiles) {
  const int64_t elements = dq_elements(params, kHeadDim);
  params.dq_accumulator = dq_accumulator(elements);
  CUDA_CHECK(cudaMemsetAsync(params.dq_accumulator, 0, size_t(elements) * sizeof(float), stream()));
  launch_tiles(dkdv_kernel<kHeadDim, flash::DqShare::atomic>,
               flash::dkdv_shared_bytes<kHeadDim, flash::DqShare::atomic>(), tiles,
               params.kv_heads, offsets, params);
  CST_LAUNCH(ceil_div(elements, 256 * flash::kDqElementsPerThread), 256, 0,
             dq_from_accumulator_kernel)(params, elements);
  CUDA_CHECK_LAUNCH();
}

bool uses_warpgroup_dq(BackwardKernels kernels) {
  return kernels == BackwardKernels::warpgroup_dq || kernels == BackwardKernels::warpgroups;
}
bool uses_warpgroup_dkdv(BackwardKernels kernels) {
  return kernels == BackwardKernels::warpgroup_dkdv || kernels == BackwardKernels::warpgroups;
}

// The two passes of recompute_dq, each on mma.sync or on Hopper's warpgroups.
template <int kHeadDim>
void dkdv_and_dq_passes(const AttentionParams& params, const DeviceOffsets& offsets,
                        BackwardKernels kernels) {
  const int key_tiles = ceil_div(offsets.max_seqlen, flash::kTileRows);
  if (uses_warpgroup_dkdv(kernels))
    launch_tiles(dkdv_warpgroup_kernel<kHeadDim>,
                 flash::backward_dkdv_warpgroup_shared_bytes<kHeadDim>(), key_tiles,
                 params.kv_heads, offsets, params);
  else
    launch_tiles(dkdv_kernel<kHeadDim, flash::DqShare::none>,
                 flash::dkdv_shared_bytes<kHeadDim, flash::DqShare::none>(), key_tiles,
                 params.kv_heads, offsets, params);
  if (uses_warpgroup_dq(kernels)) {
    constexpr int kQueryRows = flash::kQueryTileWarpgroups * flash::kTileRows;
    launch_tiles(dq_warpgroups_kernel<kHeadDim>,
                 flash::backward_dq_warpgroups_shared_bytes<kHeadDim>(),
                 ceil_div(offsets.max_seqlen, kQueryRows), params.heads, offsets, params,
                 flash::kQueryTileThreads);
  } else {
    launch_tiles(dq_kernel<kHeadDim>, flash::dq_shared_bytes<kHeadDim>(),
                 ceil_div(offsets.max_seqlen, flash::kTileRows), params.heads, offsets, params);
  }
}

template <int kHeadDim>
void backward_for_head_dim(const AttentionParams& params, const DeviceOffsets& offsets,
                           AttentionBackward mode, BackwardKernels kernels) {
  int64_t warps = int64_t(params.tokens) * params.heads;
  int blocks = ceil_div(warps * 32, 256);
  CST_LAUNCH(blocks, 256, 0, dout_dot_out_kernel<kHeadDim>)(params);
  CUDA_CHECK_LAUNCH();
  int tiles = ceil_div(offsets.max_seqlen, flash::kTileRows);
  switch (mode) {
    case AttentionBackward::ordered_dq: return dkdv_and_ordered_dq<kHeadDim>(params, offsets, tiles);
    case AttentionBackward::atomic_dq: return dkdv_and_atomic_dq<kHeadDim>(params, offsets, tiles);
    case AttentionBackward::recompute_dq:
      return dkdv_and_dq_passes<kHeadDim>(params, offsets, kernels);
  }
}

}  // namespace

bool warpgroup_kernels_run() {
  static const bool hopper = [] {
    int device = 0, major = 0, minor = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    return major == 9 && minor == 0;
  }();
  return hopper;
}

ForwardQueryTile default_forward_query_tile() {
  return kWarpgroupForwardOnHopper && warpgroup_kernels_run() ? ForwardQueryTile::rows128_warpgroups
                                                              : kDefaultForwardQueryTile;
}

BackwardKernels default_backward_kernels() {
  return kBackwardKernelsOnHopper != BackwardKernels::mma && warpgroup_kernels_run()
             ? kBackwardKernelsOnHopper
             : BackwardKernels::mma;
}

const char* backward_kernels_name(BackwardKernels kernels) {
  switch (kernels) {
    case BackwardKernels::mma: return "mma";
    case BackwardKernels::warpgroup_dq: return "warpgroup_dq";
    case BackwardKernels::warpgroup_dkdv: return "warpgroup_dkdv";
    case BackwardKernels::warpgroups: return "warpgroups";
  }
  return "?";
}

const char* forward_query_tile_name(ForwardQueryTile tile) {
  switch (tile) {
    case ForwardQueryTile::rows64: return "rows64";
    case ForwardQueryTile::rows128: return "rows128";
    case ForwardQueryTile::rows128_steps32: return "rows128_steps32";
    case ForwardQueryTile::rows128_warpgroups: return "rows128_warpgroups";
  }
  return "?";
}

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape) {
  attention_forward(out, lse, q, k, v, cu_seqlens, shape, default_forward_query_tile());
}

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape, ForwardQueryTile tile) {
  AttentionParams params = make_params(q, k, v, out, lse, shape);
  if (tile == ForwardQueryTile::rows128_warpgroups && has_flash_kernels(shape.head_dim) &&
      !warpgroup_kernels_run())
    fail("attention on cuda: the rows128_warpgroups forward needs a GPU of compute capability "
         "9.0 (sm_90a)");
  if (params.tokens == 0) return;
  DeviceOffsets offsets = upload_offsets(cu_seqlens);
  params.cu_seqlens = offsets.data;
  if (shape.head_dim == 64) forward_for_head_dim<64>(params, offsets, tile);
  else if (shape.head_dim == 128) forward_for_head_dim<128>(params, offsets, tile);
  else rowwise::forward(params, offsets.sequences, shape.head_dim);
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const std::vector<int32_t>& cu_seqlens,
                        const AttentionShape& shape, AttentionBackward mode,
                        BackwardKernels kernels) {
  AttentionParams params = make_params(q, k, v, out, lse, shape);
  if (kernels != BackwardKernels::mma && has_flash_kernels(shape.head_dim) &&
      !warpgroup_kernels_run())
    fail("attention on cuda: the ", backward_kernels_name(kernels),
         " backward needs a GPU of compute capability 9.0 (sm_90a)");
  check_operand(dout, DType::bf16, "dout", shape.head_dim);
  check_operand(dq, DType::bf16, "dq", shape.head_dim);
  check_operand(dk, DType::bf16, "dk", shape.head_dim);
  check_operand(dv, DType::bf16, "dv", shape.head_dim);
  if (params.tokens == 0) return;
  DeviceOffsets offsets = upload_offsets(cu_seqlens);
  params.cu_seqlens = offsets.data;
  params.dout = static_cast<const __nv_bfloat16*>(dout.data);
  params.dq = static_cast<__nv_bfloat16*>(dq.data);
  params.dk = static_cast<__nv_bfloat16*>(dk.data);
  params.dv = static_cast<__nv_bfloat16*>(dv.data);
  static ScratchBuffer dout_dot_out;
  params.dout_dot_out =
      static_cast<float*>(dout_dot_out.reserve(size_t(params.tokens) * shape.heads * sizeof(float)));
  if (shape.head_dim == 64) backward_for_head_dim<64>(params, offsets, mode, kernels);
  else if (shape.head_dim == 128) backward_for_head_dim<128>(params, offsets, mode, kernels);
  else rowwise::backward(params, offsets.sequences, shape.head_dim);
}

}  // namespace cst::cuda
