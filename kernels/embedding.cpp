// CPU reference of the token embedding: a row gather.
#include "kernels/embedding.h"

#include <cstring>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  Device device = common_device(op, out, ids, table);
  check_rank(table, 2, op, "table");
  check_rank(ids, 1, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  int64_t tokens = ids.shape[0], vocab = table.shape[0], channels = table.shape[1];
  check_dims(out, {tokens, channels}, op, "out");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::embedding_forward(out, ids, table));

  check_f32(op, {{&out, "out"}, {&table, "table"}});
  const int32_t* id_data = ids.i32();
  // Checked up front, outside the parallel loop, so a bad id is an error and never a wild read.
  for (int64_t n = 0; n < tokens; ++n)
    if (id_data[n] < 0 || id_data[n] >= vocab)
      fail(op, ": ids[", n, "] = ", id_data[n], " is outside the vocabulary [0, ", vocab, ")");
  const float* table_data = table.f32();
  float* out_data = out.f32();
#pragma omp parallel for
  for (int64_t n = 0; n < tokens; ++n)
    std::memcpy(out_data + n * channels, table_data + int64_t(id_data[n]) * channels,
                sizeof(float) * size_t(channels));
}

}  // namespace cst
