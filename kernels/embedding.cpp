// CPU reference of the row gather (token embedding) and its inverse, the row scatter.
#include "kernels/embedding.h"

#include <cstring>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

namespace {

// The shapes of both directions: ids (N) i32 index the rows of `indexed` (R, C); `packed` is (N, C).
struct IndexedRows {
  int64_t count, indexed_rows, channels;
};

IndexedRows check_indexed_rows(const char* op, const Tensor& indexed, const Tensor& ids,
                               const Tensor& packed, const char* packed_name) {
  check_rank(indexed, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  IndexedRows shape{ids.shape[0], indexed.shape[0], indexed.shape[1]};
  check_dims(packed, {shape.count, shape.channels}, op, packed_name);
  return shape;
}

// Checked up front, outside the parallel loop, so a bad id is an error and never a wild access.
void check_ids(const char* op, const Tensor& ids, int64_t limit, const char* what) {
  const int32_t* id_data = ids.i32();
  for (int64_t n = 0; n < ids.shape[0]; ++n)
    if (id_data[n] < 0 || id_data[n] >= limit)
      fail(op, ": ids[", n, "] = ", id_data[n], " is outside the ", what, " [0, ", limit, ")");
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  Device device = common_device(op, out, ids, table);
  const IndexedRows shape = check_indexed_rows(op, table, ids, out, "out");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::embedding_forward(out, ids, table));

  check_f32(op, {{&out, "out"}, {&table, "table"}});
  check_ids(op, ids, shape.indexed_rows, "vocabulary");
  const int32_t* id_data = ids.i32();
  const size_t row_bytes = sizeof(float) * size_t(shape.channels);
#pragma omp parallel for
  for (int64_t n = 0; n < shape.count; ++n)
    std::memcpy(out.f32() + n * shape.channels, table.f32() + int64_t(id_data[n]) * shape.channels, row_bytes);
}

void scatter_rows(const Tensor& table, const Tensor& ids, const Tensor& rows) {
  const char* op = "scatter_rows";
  Device device = common_device(op, table, ids, rows);
  const IndexedRows shape = check_indexed_rows(op, table, ids, rows, "rows");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::scatter_rows(table, ids, rows));

  check_f32(op, {{&table, "table"}, {&rows, "rows"}});
  check_ids(op, ids, shape.indexed_rows, "table's rows");
  const int32_t* id_data = ids.i32();
  const size_t row_bytes = sizeof(float) * size_t(shape.channels);
#pragma omp parallel for
  for (int64_t n = 0; n < shape.count; ++n)
    std::memcpy(table.f32() + int64_t(id_data[n]) * shape.channels, rows.f32() + n * shape.channels, row_bytes);
}

}  // namespace cst
