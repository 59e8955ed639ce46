// CUDA token embedding: a row gather, 16-byte chunks when the row allows it. The table (bf16 or
// f32) and the output (bf16 or f32) may differ in dtype.
#include <vector>

#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/embedding.h"

namespace cst::cuda {

// out (tokens, channels) = table[ids] with table (vocab, channels); ids checked on the host.
template <int Width, class TO, class TT>
__global__ void embedding_kernel(TO* out, const int32_t* ids, const TT* table, int64_t tokens,
                                 int64_t channels) {
  int64_t chunks_per_row = channels / Width;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < tokens * chunks_per_row;
       item += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = item / chunks_per_row, c = (item % chunks_per_row) * Width;
    float values[Width];
    load_chunk<Width>(table + int64_t(ids[n]) * channels + c, values);
    store_chunk<Width>(out + n * channels + c, values);
  }
}

// A bad id must be an error, not a wild read. The ids are a few KB, so they are checked on the
// host (one small copy and a sync per forward pass) with the same message as the CPU reference.
static void check_ids(const Tensor& ids, int64_t vocab) {
  std::vector<int32_t> host_ids(size_t(ids.numel()));
  copy_bytes(host_ids.data(), ids.data, ids.nbytes());
  for (size_t n = 0; n < host_ids.size(); ++n)
    if (host_ids[n] < 0 || host_ids[n] >= vocab)
      fail("embedding_forward: ids[", n, "] = ", host_ids[n], " is outside the vocabulary [0, ",
           vocab, ")");
}

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  for (const Tensor* t : {&out, &ids, &table}) check_on_gpu(*t, op, "every argument");
  check_rank(table, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  int64_t tokens = ids.shape[0], vocab = table.shape[0], channels = table.shape[1];
  check_dims(out, {tokens, channels}, op, "out");
  if (tokens == 0 || channels == 0) return;
  check_ids(ids, vocab);
  with_float_type(out, op, "out", [&](auto out_tag) {
    with_float_type(table, op, "table", [&](auto table_tag) {
      using TO = decltype(out_tag);
      using TT = decltype(table_tag);
      TO* out_data = static_cast<TO*>(out.data);
      const TT* table_data = static_cast<const TT*>(table.data);
      if (can_use_chunks(channels, out_data, table_data))
        embedding_kernel<kChunk><<<grid_blocks(tokens * (channels / kChunk)), kThreads, 0, stream()>>>(
            out_data, ids.i32(), table_data, tokens, channels);
      else
        embedding_kernel<1><<<grid_blocks(tokens * channels), kThreads, 0, stream()>>>(
            out_data, ids.i32(), table_data, tokens, channels);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace cst::cuda
