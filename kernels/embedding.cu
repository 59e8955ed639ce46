// CUDA row gather (token embedding) and row scatter, 16-byte chunks when the rows allow it. The
// indexed table and the packed rows may differ in dtype (bf16 or f32).
#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/embedding.h"

namespace cst::cuda {

// Gather: out[n] = in[ids[n]]; scatter: out[ids[n]] = in[n]. `indexed_rows` bounds the ids. The ids
// stay on the device: an id outside [0, indexed_rows) is recorded in the bad-index note (raised at
// the next synchronisation) instead of being followed; a gather writes a zero row for it, a scatter
// writes nothing.
template <int Width, bool Scatter, class TO, class TI>
__global__ void indexed_rows_kernel(TO* out, const TI* in, const int32_t* ids, int64_t count,
                                    int64_t channels, int64_t indexed_rows, BadIndexNote* note,
                                    BadIndexLabel label) {
  int64_t chunks_per_row = channels / Width;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < count * chunks_per_row;
       item += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = item / chunks_per_row, c = (item % chunks_per_row) * Width;
    int32_t id = ids[n];
    bool valid = id >= 0 && id < indexed_rows;
    if (!valid && c == 0) record_bad_index(note, label, n, id, indexed_rows);
    if (Scatter && !valid) continue;
    float values[Width] = {};
    if (valid) load_chunk<Width>(in + (Scatter ? n : int64_t(id)) * channels + c, values);
    store_chunk<Width>(out + (Scatter ? int64_t(id) : n) * channels + c, values);
  }
}

// out and in as the kernel takes them; `indexed` is the one the ids index.
template <bool Scatter>
static void launch_indexed_rows(const char* op, BadIndexLabel ids_name, const Tensor& out, const Tensor& in,
                                const Tensor& ids, const Tensor& indexed) {
  for (const Tensor* t : {&out, &in, &ids}) check_on_gpu(*t, op, "every argument");
  check_rank(indexed, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  const Tensor& packed = Scatter ? in : out;
  int64_t count = ids.shape[0], indexed_rows = indexed.shape[0], channels = indexed.shape[1];
  check_dims(packed, {count, channels}, op, Scatter ? "rows" : "out");
  if (count > INT32_MAX) fail(op, ": too many rows in ", ids.describe());
  if (count == 0 || channels == 0) return;
  with_float_type(out, op, "out", [&](auto out_tag) {
    with_float_type(in, op, "in", [&](auto in_tag) {
      using TO = decltype(out_tag);
      using TI = decltype(in_tag);
      TO* out_data = static_cast<TO*>(out.data);
      const TI* in_data = static_cast<const TI*>(in.data);
      if (can_use_chunks(channels, out_data, in_data))
        CST_LAUNCH(grid_blocks(count * (channels / kChunk)), kThreads, 0,
                   indexed_rows_kernel<kChunk, Scatter>)(
            out_data, in_data, ids.i32(), count, channels, indexed_rows, bad_index_note(), ids_name);
      else
        CST_LAUNCH(grid_blocks(count * channels), kThreads, 0, indexed_rows_kernel<1, Scatter>)(
            out_data, in_data, ids.i32(), count, channels, indexed_rows, bad_index_note(), ids_name);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  launch_indexed_rows<false>("embedding_forward", {"embedding_forward: ids", "the vocabulary"}, out, table, ids, table);
}

void scatter_rows(const Tensor& table, const Tensor& ids, const Tensor& rows) {
  launch_indexed_rows<true>("scatter_rows", {"scatter_rows: ids", "the table's rows"}, table, rows, ids, table);
}

}  // namespace cst::cuda
