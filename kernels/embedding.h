// Token embedding: out[n, :] = table[ids[n], :].
// The table is frozen in LoRA training, so there is no backward into it; the gradient stops
// at the embedding output.
#pragma once
#include "kernels/tensor.h"

namespace cst {

// out (N, C), ids (N) i32, table (V, C). Ids outside [0, V) are an error: on the CPU at once; on
// CUDA, where the ids are not read back, at the next synchronisation (the row is left zero).
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);

namespace cuda {
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);
}

}  // namespace cst
