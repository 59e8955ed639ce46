// Row copies by index.
//   gather (the token embedding):  out[n, :] = table[ids[n], :]
//   scatter (its inverse):         table[ids[n], :] = rows[n, :]
// The embedding table is frozen in LoRA training, so there is no backward into it; the gradient
// stops at the embedding output. The scatter writes new keys and values into a KV cache.
#pragma once
#include "kernels/tensor.h"

namespace cst {

// out (N, C), ids (N) i32, table (V, C). Ids outside [0, V) are an error: on the CPU at once; on
// CUDA, where the ids are not read back, at the next synchronisation (the row is left zero).
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);

// table (R, C), ids (N) i32, rows (N, C). Ids outside [0, R) are an error as above (on CUDA the
// row is not written). Two equal ids leave either row: callers pass distinct ids.
void scatter_rows(const Tensor& table, const Tensor& ids, const Tensor& rows);

namespace cuda {
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);
void scatter_rows(const Tensor& table, const Tensor& ids, const Tensor& rows);
}

}  // namespace cst
