// CUDA token embedding: a row gather, 16-byte chunks when the row allows it. The table (bf16 or
// f32) and the output (bf16 or f32) may differ in dtype.
#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/embedding.h"

namespace cst::cuda {

// out (tokens, channels) = table[ids] with table (vocab, channels). The ids stay on the device:
// an id outside the table gives a zero row and is recorded in the bad-index note (raised at the
// next synchronisation) instead of being followed. `what` is that note's host string: its address
// is passed in from the host, since a literal named in device code would have a device address.
template <int Width, class TO, class TT>
__global__ void embedding_kernel(TO* out, const int32_t* ids, const TT* table, int64_t tokens,
                                 int64_t channels, int64_t vocab, BadIndexNote* note,
                                 const char* what) {
  int64_t chunks_per_row = channels / Width;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < tokens * chunks_per_row;
       item += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = item / chunks_per_row, c = (item % chunks_per_row) * Width;
    int32_t id = ids[n];
    float values[Width] = {};
    if (id >= 0 && id < vocab)
      load_chunk<Width>(table + int64_t(id) * channels + c, values);
    else if (c == 0)
      record_bad_index(note, what, n, id, vocab);
    store_chunk<Width>(out + n * channels + c, values);
  }
}

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  for (const Tensor* t : {&out, &ids, &table}) check_on_gpu(*t, op, "every argument");
  check_rank(table, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  int64_t tokens = ids.shape[0], vocab = table.shape[0], channels = table.shape[1];
  check_dims(out, {tokens, channels}, op, "out");
  if (tokens > INT32_MAX) fail(op, ": too many tokens in ", ids.describe());
  if (tokens == 0 || channels == 0) return;
  const char* ids_name = "embedding_forward: ids";
  with_float_type(out, op, "out", [&](auto out_tag) {
    with_float_type(table, op, "table", [&](auto table_tag) {
      using TO = decltype(out_tag);
      using TT = decltype(table_tag);
      TO* out_data = static_cast<TO*>(out.data);
      const TT* table_data = static_cast<const TT*>(table.data);
      if (can_use_chunks(channels, out_data, table_data))
        embedding_kernel<kChunk><<<grid_blocks(tokens * (channels / kChunk)), kThreads, 0, stream()>>>(
            out_data, ids.i32(), table_data, tokens, channels, vocab, bad_index_note(), ids_name);
      else
        embedding_kernel<1><<<grid_blocks(tokens * channels), kThreads, 0, stream()>>>(
            out_data, ids.i32(), table_data, tokens, channels, vocab, bad_index_note(), ids_name);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace cst::cuda
