// CPU reference of the row gather (token embedding) and its inverse, the row scatter.
#include "kernels/embedding.h"

#include <cstring>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

namespace {

// Both directions on the CPU: row n of `packed` (N, C) is copied from (gather) or to (scatter) row
// ids[n] of `indexed` (R, C). The ids are checked up front, outside the parallel loop, so a bad id
// is an error and never a wild access.
void copy_indexed_rows(const char* op, const Tensor& indexed, const Tensor& ids, const Tensor& packed,
                       bool scatter, const char* range) {
  check_f32(op, {{&indexed, "table"}, {&packed, scatter ? "rows" : "out"}});
  const int32_t* id_data = ids.i32();
  const int64_t count = ids.shape[0], limit = indexed.shape[0], channels = indexed.shape[1];
  for (int64_t n = 0; n < count; ++n)
    if (id_data[n] < 0 || id_data[n] >= limit)
      fail(op, ": ids[", n, "] = ", id_data[n], " is outside ", range, " [0, ", limit, ")");
  const size_t row_bytes = sizeof(float) * size_t(channels);
#pragma omp parallel for
  for (int64_t n = 0; n < count; ++n) {
    float* indexed_row = indexed.f32() + int64_t(id_data[n]) * channels;
    float* packed_row = packed.f32() + n * channels;
    if (scatter) std::memcpy(indexed_row, packed_row, row_bytes);
    else std::memcpy(packed_row, indexed_row, row_bytes);
  }
}

void check_indexed_rows(const char* op, const Tensor& indexed, const Tensor& ids, const Tensor& packed,
                        const char* packed_name) {
  check_rank(indexed, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  check_dims(packed, {ids.shape[0], indexed.shape[1]}, op, packed_name);
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  Device device = common_device(op, out, ids, table);
  check_indexed_rows(op, table, ids, out, "out");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::embedding_forward(out, ids, table));
  copy_indexed_rows(op, table, ids, out, false, "the vocabulary");
}

void scatter_rows(const Tensor& table, const Tensor& ids, const Tensor& rows) {
  const char* op = "scatter_rows";
  Device device = common_device(op, table, ids, rows);
  check_indexed_rows(op, table, ids, rows, "rows");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::scatter_rows(table, ids, rows));
  copy_indexed_rows(op, table, ids, rows, true, "the table's rows");
}

}  // namespace cst
